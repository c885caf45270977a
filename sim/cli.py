"""``mmbc-sim``: replay recorded days against MMBC's policies, bench them, or serve the plant."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from sim.replay.inprocess import run_scenario
from sim.replay.invariants import INVARIANTS
from sim.replay.result import RunResult, result_json
from sim.scenario import DEFAULT_SCENARIO, Scenario, ScenarioError, load_scenario, load_scenarios
from sim.scoring.metrics import DEFAULT_TABLE_KEYS, format_side_by_side, format_table

POLICIES = ("mmbc", "classic")
SCENARIO_ROOT = Path(DEFAULT_SCENARIO).parent
EXIT_USAGE = 2
# The run table: the scoring's default columns less the absolute cost (the regret says more).
RUN_KEYS = tuple(key for key in DEFAULT_TABLE_KEYS if key != "cost_eur")


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
    run.add_argument("--plot", type=Path, help="draw grid, battery power and SoC to a PNG")
    run.add_argument("--wire", action="store_true", help="through real sockets (mmbc only)")
    run.add_argument(
        "--dashboard",
        action="store_true",
        help="with --wire: the engine's HTTP server on, a dashboard open and scraped",
    )
    bench = sub.add_parser("bench", help="run scenarios for every policy, side by side")
    bench.add_argument("scenarios", nargs="*", type=Path)
    bench.add_argument("--json", type=Path)
    bench.add_argument("--policy", action="append", choices=POLICIES)
    bench.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
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


def _default_run_args() -> argparse.Namespace:
    return argparse.Namespace(
        scenario=Path(DEFAULT_SCENARIO),
        policy="all",
        json=None,
        plot=None,
        wire=False,
        dashboard=False,
    )


# ---------------------------------------------------------------------- run
def _cmd_run(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario)
    policies = POLICIES if args.policy == "all" else (args.policy,)
    results = []
    for policy in policies:
        if args.wire and policy == "mmbc":
            from sim.replay.wire import run_wire

            result = run_wire(
                scenario,
                progress=_progress(f"{scenario.name} {policy} (wire)"),
                dashboard=args.dashboard,
            )
        else:
            result = run_scenario(scenario, policy, progress=_progress(f"{scenario.name} {policy}"))
        results.append(result)
    _clear_progress()
    print(f"{scenario.name}: {scenario.description}".strip())
    print(format_table([(r.scenario, r.policy, r.metrics) for r in results], list(RUN_KEYS)))
    print()
    print(_invariant_table(results))
    for r in results:
        for note in r.notes[:20]:
            print(f"  [{r.policy}] {note}")
    if args.json:
        _write_json(args.json, results)
    if args.plot:
        from sim.scoring.plot import plot_runs

        plot_runs(results, args.plot)
        print(f"plot written to {args.plot}")
    return 0


# ---------------------------------------------------------------------- bench
def _bench_paths(paths: list[Path]) -> list[Path]:
    if paths:
        return paths
    main_set = sorted(SCENARIO_ROOT.glob("*.toml"))
    return main_set + sorted((SCENARIO_ROOT / "variants").glob("*.toml"))


def _bench_one(job: tuple[str, str, bool]) -> RunResult:
    path, policy, strip_faults = job
    scenario = load_scenario(Path(path))
    if strip_faults:
        scenario = dataclasses.replace(scenario, faults=(), name=scenario.name + "#nofault")
    result = run_scenario(scenario, policy)
    result.record = None  # type: ignore[assignment]  # too big to send between processes
    return result


def _cmd_bench(args: argparse.Namespace) -> int:
    paths = _bench_paths(list(args.scenarios))
    scenarios = load_scenarios(paths)
    policies = tuple(args.policy) if args.policy else POLICIES
    jobs: list[tuple[str, str, bool]] = []
    for sc in scenarios:
        for policy in policies:
            jobs.append((str(sc.path), policy, False))
            if sc.faults:
                jobs.append((str(sc.path), policy, True))
    results: list[RunResult] = []
    show = _progress("bench")
    if args.jobs > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            for i, r in enumerate(pool.map(_bench_one, jobs), start=1):
                results.append(r)
                if show:
                    show(i, len(jobs))
    else:
        for i, job in enumerate(jobs, start=1):
            results.append(_bench_one(job))
            if show:
                show(i, len(jobs))
    _clear_progress()
    results = _attach_fault_costs(results)
    main_results = [r for r in results if not r.scenario.endswith("#nofault")]
    print(format_side_by_side([(r.scenario, r.policy, r.metrics) for r in main_results]))
    print()
    print(_invariant_table(main_results))
    if args.json:
        _write_json(args.json, main_results)
    return 0


def _attach_fault_costs(results: list[RunResult]) -> list[RunResult]:
    """Grid exchange a fault cost: the same scenario and policy, run without its faults."""
    suffix = "#nofault"
    base = {
        (r.scenario.removesuffix(suffix), r.policy): r
        for r in results
        if r.scenario.endswith(suffix)
    }
    for r in results:
        ref = base.get((r.scenario, r.policy))
        if ref is not None:
            exchange = r.metrics["import_wh"] + r.metrics["export_wh"]
            ref_exchange = ref.metrics["import_wh"] + ref.metrics["export_wh"]
            r.metrics["fault_cost_wh"] = exchange - ref_exchange
    return results


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
def _invariant_table(results: list[RunResult]) -> str:
    short = {name: name.replace("_", " ") for name in INVARIANTS}
    header = f"{'scenario':<34} {'policy':<8} " + " ".join(f"{n[:12]:>12}" for n in INVARIANTS)
    # The grid exchange (import + export) a fault cost against the same run without it.
    costs = any("fault_cost_wh" in r.metrics for r in results)
    if costs:
        header += f" {'fault Wh':>9}"
    lines = ["invariants (pass, or FAIL@t_s of the first violation):", header]
    for r in results:
        cells = []
        for name in INVARIANTS:
            t = r.report.first_violation_s.get(name) if r.report else None
            cells.append(f"{'pass' if t is None else f'FAIL@{t:.0f}':>12}")
        if costs:
            cost = r.metrics.get("fault_cost_wh")
            cells.append(f"{'-' if cost is None else f'{cost:+.0f}':>9}")
        lines.append(f"{r.scenario[:34]:<34} {r.policy:<8} " + " ".join(cells))
    del short
    return "\n".join(lines)


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
