"""``mmbc-sim`` as a user runs it: the score tables and the JSON shape the issue fixes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sim.cli import main
from sim.replay.invariants import INVARIANTS
from sim.scenario import SCENARIO_DIR
from sim.scoring.metrics import METRIC_KEYS

KETTLE = SCENARIO_DIR / "kettle.toml"
FAULT = SCENARIO_DIR / "faults" / "battery_offline.toml"


def test_run_prints_the_score_and_writes_every_metric_and_invariant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run.json"
    assert main(["run", str(KETTLE), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "reference" in printed
    assert "invariants" in printed
    assert "\x1b" not in printed  # not a terminal: plain text, no colour codes
    invariant_lines = printed.split("invariants (", 1)[1].splitlines()
    mmbc_row = next(line for line in invariant_lines if line.startswith("kettle    mmbc"))
    assert mmbc_row.split()[2:] == ["pass"] * len(INVARIANTS)
    runs = json.loads(out.read_text())["runs"]
    assert [(r["scenario"], r["policy"]) for r in runs] == [
        ("kettle", "mmbc"),
        ("kettle", "classic"),
    ]
    for run in runs:
        assert set(METRIC_KEYS) <= set(run["metrics"])
        assert set(run["invariants"]) == set(INVARIANTS)
        assert all(isinstance(v, bool) for v in run["invariants"].values())
    # The policies really differ: the table is not one run printed twice.
    assert runs[0]["metrics"]["excess_wh"] != runs[1]["metrics"]["excess_wh"]


def test_bench_runs_every_scenario_for_every_policy_and_prices_faults(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", str(KETTLE), str(FAULT), "--jobs", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "TOTAL" in printed
    assert "fault" in printed  # the fault cost column of the invariant table
    runs = json.loads(out.read_text())["runs"]
    pairs = {(r["scenario"], r["policy"]) for r in runs}
    assert pairs == {(s, p) for s in ("kettle", "battery_offline") for p in ("mmbc", "classic")}
    fault_runs = [r for r in runs if r["scenario"] == "battery_offline"]
    assert all("fault_cost_wh" in r["metrics"] for r in fault_runs)
    assert all("fault_cost_wh" not in r["metrics"] for r in runs if r not in fault_runs)
    assert all(
        r["invariants"]["unavailable_gets_no_command"] for r in fault_runs if r["policy"] == "mmbc"
    )


def test_a_bad_scenario_names_its_key_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(KETTLE.read_text().replace("[trace]", "colour = 'red'\n\n[trace]", 1))
    assert main(["run", str(bad)]) == 2
    assert "colour" in capsys.readouterr().err


def test_bench_jobs_must_be_a_positive_number(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", str(KETTLE), "--jobs", "0"])
    assert exit_info.value.code == 2
    assert "--jobs" in capsys.readouterr().err
