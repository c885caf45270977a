"""``mmbc-sim``: replay recorded days against MMBC's policies, bench them, or serve the plant."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from sim.replay.bench import available_cores, run_bench
from sim.replay.inprocess import run_scenario
from sim.replay.invariants import INVARIANTS
from sim.replay.result import RunResult, result_json
from sim.replay.timing import swept_phases
from sim.scenario import DEFAULT_SCENARIO, Scenario, ScenarioError, load_scenario, load_scenarios
from sim.scoring.metrics import phase_mean
from sim.scoring.series import series_paths, write_series
from sim.scoring.tables import (
    DEFAULT_TABLE_KEYS,
    bench_tables,
    make_console,
    print_tables,
    run_table,
)

POLICIES = ("mmbc", "classic")
DEFAULT_BENCH_PHASES = 4  # tick phases per scenario in the bench (mean and worst)
SCENARIO_ROOT = Path(DEFAULT_SCENARIO).parent
EXIT_USAGE = 2
# The run table: the scoring's default columns less the absolute cost (the regret says more).
RUN_KEYS = tuple(key for key in DEFAULT_TABLE_KEYS if key != "cost_eur")
_INVARIANT_HEADER_CHARS = 14  # invariant names are headed on two or three lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    # The engine's own log lines (meter unavailable, battery excluded, ...) are collected as
    # run notes; on the console they would interleave with the tables.
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.ERROR)
    try:
        if args.command is None:
            return _cmd_run(_default_run_args())
        handler = {"run": _cmd_run, "bench": _cmd_bench, "serve": _cmd_serve}[args.command]
        return handler(args)
    except ScenarioError as err:
        print(f"mmbc-sim: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmbc-sim",
        description="Replay recorded days against MMBC's policies in virtual time and score them."
        " Without a command: run the default scenario and print its score.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show the engine's log")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="replay one scenario")
    run.add_argument("scenario", type=Path)
    run.add_argument("--policy", choices=(*POLICIES, "all"), default="all")
    run.add_argument("--json", type=Path, help="write the results as JSON")
    run.add_argument(
        "--plot",
        type=Path,
        help="draw grid, battery power and SoC to a PNG, with a zoom of the worst minute",
    )
    run.add_argument(
        "--series",
        type=Path,
        metavar="FILE.csv",
        help="write the per-step time series (one file per policy; see docs/scoring.md)",
    )
    run.add_argument("--wire", action="store_true", help="through real sockets (mmbc only)")
    run.add_argument(
        "--dashboard",
        action="store_true",
        help="with --wire: the engine's HTTP server on, a dashboard open and scraped",
    )
    timing = run.add_mutually_exclusive_group()
    timing.add_argument(
        "--phase",
        type=_fraction,
        help="where the cycles fall against the meter's refresh, a fraction in [0, 1)"
        " (default: drawn from the scenario's seed; 0 is the luckiest)",
    )
    timing.add_argument(
        "--phases",
        type=_positive_int,
        metavar="N",
        help="sweep N phases: one line per phase, then their mean and the worst",
    )
    bench = sub.add_parser("bench", help="run scenarios for every policy, side by side")
    bench.add_argument("scenarios", nargs="*", type=Path)
    bench.add_argument("--json", type=Path)
    bench.add_argument("--policy", action="append", choices=POLICIES)
    bench.add_argument(
        "--jobs",
        type=_positive_int,
        default=available_cores(),
        help="scenarios run in parallel in this many processes (default: every core)",
    )
    bench.add_argument(
        "--phases",
        type=_positive_int,
        metavar="N",
        default=DEFAULT_BENCH_PHASES,
        help="tick phases per scenario: the table shows their mean and the worst phase's"
        f" excess (default {DEFAULT_BENCH_PHASES})",
    )
    serve = sub.add_parser("serve", help="serve the plant in real time for an external engine")
    serve.add_argument("scenario", type=Path)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--p1-port", type=int, default=8080)
    serve.add_argument("--pv-port", type=int, default=None)
    serve.add_argument("--modbus-port", type=int, default=5020)
    serve.add_argument("--json", type=Path)
    serve.add_argument("--speed", type=float, default=1.0, help="plant speed (1 = real time)")
    serve.add_argument(
        "--p1-api", choices=("v1", "v2", "both"), default="v1", help="the P1 meter's API(s)"
    )
    serve.add_argument("--p1-tls-port", type=int, default=8443, help="API v2 (HTTPS) port")
    serve.add_argument(
        "--p1-button",
        choices=("signal", "always"),
        default="signal",
        help="v2 pairing button: SIGUSR1 presses it, or always held down",
    )
    serve.add_argument("--p1-token", help="v2: a token already paired (as local/mmbc)")
    serve.add_argument("--tls-dir", type=Path, help="v2: where to write the test CA")
    serve.add_argument("--mdns", action="store_true", help="advertise the meters on loopback")
    return parser


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1), not {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, not {text!r}")
    return value


def _default_run_args() -> argparse.Namespace:
    return argparse.Namespace(
        scenario=Path(DEFAULT_SCENARIO),
        policy="all",
        json=None,
        plot=None,
        series=None,
        wire=False,
        phase=None,
        phases=None,
        dashboard=False,
    )


# ---------------------------------------------------------------------- run
def _phase_label(r: RunResult) -> str:
    return r.scenario if r.phase is None else f"{r.scenario} @{r.phase:.2f}"


def _cmd_run(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario)
    policies = POLICIES if args.policy == "all" else (args.policy,)
    phases: list[float | None] = (
        [args.phase] if args.phases is None else list(swept_phases(args.phases))
    )
    results = []
    for policy in policies:
        for phase in phases:
            label = f"{scenario.name} {policy}" + ("" if phase is None else f" @{phase:.2f}")
            if args.wire and policy == "mmbc":
                from sim.replay.wire import run_wire

                result = run_wire(
                    scenario,
                    progress=_progress(f"{label} (wire)"),
                    phase=phase,
                    dashboard=args.dashboard,
                )
            else:
                result = run_scenario(scenario, policy, progress=_progress(label), phase=phase)
            results.append(result)
    _clear_progress()
    print(f"{scenario.name}: {scenario.description}".strip())
    print()
    rows = [(_phase_label(r), r.policy, r.metrics) for r in results]
    if args.phases is not None:
        for policy in policies:
            mean = phase_mean([r.metrics for r in results if r.policy == policy])
            rows.append((f"{scenario.name} mean of {args.phases}", policy, mean))
    print_tables(run_table(rows, RUN_KEYS), _invariant_table(results), console=make_console())
    if args.phases is None:
        for r in results:
            print(f"  [{r.policy}] cycles at phase {r.phase:.3f} of the meter's refresh")
    for r in results:
        for note in r.notes[:20]:
            print(f"  [{r.policy}] {note}")
    if args.json:
        _write_json(args.json, results)
    if args.series:
        paths = series_paths(args.series, [r.policy for r in results])
        for r, path in zip(results, paths, strict=True):
            write_series(r.record, path)
            print(f"time series of {r.policy} written to {path}")
    if args.plot:
        from sim.scoring.plot import plot_runs

        plot_runs(results, args.plot)
        print(f"plot written to {args.plot}")
    elif args.series is None:
        print(
            f"\nSee it: mmbc-sim run {_shown_path(args.scenario)} --plot {scenario.name}.png"
            " (pip install 'mmbc[plot]'), or --series out.csv for the time series."
        )
    return 0


def _shown_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------- bench
def _bench_paths(paths: list[Path]) -> list[Path]:
    if paths:
        return paths
    main_set = sorted(SCENARIO_ROOT.glob("*.toml"))
    return main_set + sorted((SCENARIO_ROOT / "variants").glob("*.toml"))


def _cmd_bench(args: argparse.Namespace) -> int:
    scenarios = load_scenarios(_bench_paths(list(args.scenarios)))
    policies = tuple(args.policy) if args.policy else POLICIES
    results = run_bench(
        scenarios,
        policies,
        jobs=args.jobs,
        phases=swept_phases(args.phases),
        progress=_progress("bench"),
    )
    _clear_progress()
    print_tables(
        *bench_tables([(r.scenario, r.policy, r.metrics) for r in results]),
        _invariant_table(results),
        console=make_console(),
    )
    if args.json:
        _write_json(args.json, results)
    return 0


# ---------------------------------------------------------------------- serve
def _cmd_serve(args: argparse.Namespace) -> int:
    from sim.replay.serve import P1Options, serve

    scenario = load_scenario(args.scenario)
    status: int = serve(
        scenario,
        host=args.host,
        p1_port=args.p1_port,
        pv_port=args.pv_port,
        modbus_port=args.modbus_port,
        json_path=args.json,
        speed=args.speed,
        p1=P1Options(
            api=args.p1_api,
            tls_port=args.p1_tls_port,
            button=args.p1_button,
            token=args.p1_token,
            tls_dir=args.tls_dir,
            mdns=args.mdns,
        ),
    )
    return status


# ---------------------------------------------------------------------- output
def _invariant_table(results: list[RunResult]) -> Group:
    """One line per run: each invariant's pass, or FAIL@t_s of its first violation; with the
    grid exchange a fault cost against the same run without it, when any run has one."""
    table = Table(
        box=box.SIMPLE,
        show_edge=False,
        header_style="bold",
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("\nscenario", no_wrap=True)
    table.add_column("\npolicy", no_wrap=True)
    for name in INVARIANTS:
        header = textwrap.fill(name.replace("_", " "), width=_INVARIANT_HEADER_CHARS)
        table.add_column(Text(header), justify="right", no_wrap=True)
    costs = any(r.metrics.fault_cost_wh is not None for r in results)
    if costs:
        table.add_column(Text("fault\nWh"), justify="right", no_wrap=True)
    for r in results:
        cells: list[Text] = [Text(r.scenario), Text(r.policy)]
        for name in INVARIANTS:
            t = r.report.first_violation_s.get(name) if r.report else None
            cells.append(Text("pass", "green") if t is None else Text(f"FAIL@{t:.0f}", "bold red"))
        if costs:
            cost = r.metrics.fault_cost_wh
            cells.append(Text("-" if cost is None else f"{cost:+.0f}"))
        table.add_row(*cells)
    title = Text("invariants (pass, or FAIL@t_s of the first violation):")
    return Group(title, table)


def _write_json(path: Path, results: list[RunResult]) -> None:
    payload = {"runs": [result_json(r) for r in results]}
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    print(f"results written to {path}")


_PROGRESS_ACTIVE = False


def _progress(label: str) -> Any:
    """A one-line progress display on a terminal; nothing when output is not a terminal."""
    if not sys.stderr.isatty():
        return None

    def show(done: float, total: float) -> None:
        global _PROGRESS_ACTIVE  # noqa: PLW0603 - one progress line per process
        _PROGRESS_ACTIVE = True
        pct = 100.0 * done / total if total else 100.0
        sys.stderr.write(f"\r{label}: {pct:5.1f} %")
        sys.stderr.flush()

    return show


def _clear_progress() -> None:
    global _PROGRESS_ACTIVE  # noqa: PLW0603
    if _PROGRESS_ACTIVE:
        sys.stderr.write("\r" + " " * 70 + "\r")
        sys.stderr.flush()
        _PROGRESS_ACTIVE = False


def scenario_summary(sc: Scenario) -> str:
    return f"{sc.name} ({len(sc.batteries)} batteries, {sc.duration_s / 3600:.1f} h)"


if __name__ == "__main__":
    raise SystemExit(main())
