"""What each control feature of the ``mmbc`` policy is worth: the bench with one feature off.

Runs ``mmbc-sim bench --policy mmbc`` once with every feature on (the baseline) and once per
``feature_*`` switch of ``ControlSettings`` with that switch off (through the
``MMBC_SIM_OVERRIDES`` environment variable, which the replay applies on top of each
scenario's ``[control]`` table), then prints the suite totals and, per feature, how much they
change when it is off. Positive deltas mean the feature helps (the suite is worse without it).

    .venv/bin/python scripts/ablation.py                  # default bench set
    .venv/bin/python scripts/ablation.py --json out.json  # also keep the numbers
    .venv/bin/python scripts/ablation.py scenarios/kettle.toml --feature feature_handover
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

from engine.core.settings import ControlSettings
from sim.cli import main as mmbc_sim
from sim.replay.inprocess import OVERRIDES_ENV
from sim.scoring.metrics import Metrics
from sim.scoring.metrics import totals as suite_totals

COLUMNS = (
    ("excess_wh", "excess Wh"),
    ("band_crossings_per_h", "crossings/h"),
    ("direction_changes", "dir changes"),
    ("conversion_loss_wh", "loss Wh"),
    ("modbus_writes", "writes"),
)
Runs = list[dict[str, Any]]


def features() -> list[str]:
    """Every switchable control feature, in declaration order."""
    return [f.name for f in fields(ControlSettings) if f.name.startswith("feature_")]


def bench(scenarios: list[str], overrides: dict[str, object], jobs: int | None) -> Runs:
    """One ``mmbc-sim bench`` of the mmbc policy with ``overrides``; per-scenario metrics."""
    os.environ[OVERRIDES_ENV] = json.dumps(overrides)  # the bench's workers inherit it
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        args = ["bench", "--policy", "mmbc", "--json", str(out), *scenarios]
        if jobs:
            args += ["--jobs", str(jobs)]
        with contextlib.redirect_stdout(io.StringIO()):
            status = mmbc_sim(args)
        if status != 0:
            raise SystemExit(f"mmbc-sim bench failed with status {status}")
        runs: Runs = json.loads(out.read_text(encoding="utf-8"))["runs"]
    return runs


def totals(runs: Runs) -> dict[str, float]:
    """Suite totals as the bench's TOTAL line (``sim.scoring.metrics.totals``)."""
    total = suite_totals([Metrics.from_json(r["metrics"]) for r in runs])
    return {k: float(getattr(total, k)) for k, _ in COLUMNS}


def worst(base: Runs, off: Runs, key: str = "excess_wh") -> str:
    """The scenario whose ``key`` grows most with the feature off."""
    by_name = {r["scenario"]: r["metrics"][key] for r in base}
    deltas = [(r["metrics"][key] - by_name.get(r["scenario"], 0.0), r["scenario"]) for r in off]
    delta, name = max(deltas)
    return f"{name} {delta:+.1f}" if delta > 0.05 else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", help="scenario files (default: the bench set)")
    parser.add_argument("--feature", action="append", help="only these features")
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--json", type=Path, help="write every total to this file")
    args = parser.parse_args(argv)

    chosen = args.feature or features()
    unknown = sorted(set(chosen) - set(features()))
    if unknown:
        parser.error(f"unknown feature(s): {', '.join(unknown)}")
    base_runs = bench(args.scenarios, {}, args.jobs)
    base = totals(base_runs)
    results: dict[str, dict[str, float]] = {"all features on": base}
    rows = []
    for name in chosen:
        runs = bench(args.scenarios, {name: False}, args.jobs)
        off = totals(runs)
        results[name] = off
        rows.append((name, {k: off[k] - base[k] for k, _ in COLUMNS}, worst(base_runs, runs)))
        print(f"  {name} done", file=sys.stderr)

    print("suite totals, all features on: " + ", ".join(f"{h} {base[k]:.1f}" for k, h in COLUMNS))
    print()
    header = f"| feature off | {' | '.join(f'Δ {h}' for _, h in COLUMNS)} | most affected |"
    print(header)
    print("|" + "---|" * (len(COLUMNS) + 2))
    for name, delta, most in rows:
        cells = " | ".join(f"{delta[k]:+.1f}" for k, _ in COLUMNS)
        print(f"| `{name}` | {cells} | {most} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
