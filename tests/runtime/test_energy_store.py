"""The energy state file on a real file system: atomic writes, bad files, rare saves."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from engine.core.energy import CounterReading, EnergyLedger, EnergyTotals
from engine.runtime import energy_store
from engine.runtime.energy_store import STATE_FILE_NAME, EnergyStateFile, default_state_file


def charged(ledger: EnergyLedger, now_s: float, charge_wh: float) -> None:
    ledger.observe(now_s, [CounterReading(1, "SN1", charge_wh, 0.0)])


def test_a_missing_file_starts_afresh(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        ledger = EnergyStateFile(tmp_path / "state.json").load()
    assert ledger.totals == EnergyTotals(None, None)
    assert any("no state file" in r.getMessage() for r in caplog.records)


def test_save_and_load_round_trip_without_leftovers(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.json"  # the directory is created
    store = EnergyStateFile(path)
    ledger = EnergyLedger()
    charged(ledger, 0.0, 1000.0)
    charged(ledger, 60.0, 1010.0)
    assert store.save(ledger)
    assert json.loads(path.read_text(encoding="utf-8"))["charge_total_wh"] == 1010.0
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temp file left
    restored = EnergyStateFile(path).load()
    assert restored.totals == ledger.totals
    assert restored.to_json() == ledger.to_json()


def test_an_invalid_file_is_moved_aside_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"version": 1, "charge_total_wh": "lots"}', encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        ledger = EnergyStateFile(path).load()
    assert ledger.totals == EnergyTotals(None, None)
    assert not path.exists()
    assert (tmp_path / "state.json.invalid").read_text(encoding="utf-8").startswith("{")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "charge_total_wh" in warnings[0]
    path.write_text("not json", encoding="utf-8")
    assert EnergyStateFile(path).load().totals == EnergyTotals(None, None)


def test_a_failed_write_keeps_the_old_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    store = EnergyStateFile(path)
    ledger = EnergyLedger()
    charged(ledger, 0.0, 1000.0)
    assert store.save(ledger)
    before = path.read_text(encoding="utf-8")

    def power_cut(src: object, dst: object) -> None:
        raise OSError("power cut before the rename")

    monkeypatch.setattr(os, "replace", power_cut)
    charged(ledger, 60.0, 1010.0)
    assert not store.save(ledger)
    assert path.read_text(encoding="utf-8") == before  # the old state, complete
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # the temp file is gone


def test_an_unwritable_place_is_logged_once_and_control_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x", encoding="utf-8")
    store = EnergyStateFile(blocker / "state.json")
    ledger = EnergyLedger()
    with caplog.at_level(logging.INFO):
        for i in range(5):
            charged(ledger, float(i), 1000.0 + 10 * i)
            assert not store.save(ledger)
        blocker.unlink()
        blocker.mkdir()
        assert store.save(ledger)
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "cannot write" in m]) == 1
    assert len([m for m in messages if "works again" in m]) == 1


async def test_saves_are_rare_and_the_last_state_is_written_at_close(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = EnergyStateFile(path, save_interval_s=300.0)
    ledger = EnergyLedger()
    store.maybe_save(ledger, 0.0)  # nothing new yet: nothing written
    assert store.saves == 0
    charged(ledger, 0.0, 1000.0)
    store.maybe_save(ledger, 0.0)  # the first change is written soon (a fresh file exists)
    await store.close(ledger)
    assert store.saves == 1
    for t_s in range(1, 300):  # every cycle for five minutes: no write
        charged(ledger, float(t_s), 1000.0 + 10 * (t_s // 30))
        store.maybe_save(ledger, float(t_s))
    await store.close(ledger)  # the shutdown writes the latest state
    assert store.saves == 2
    assert EnergyStateFile(path).load().totals == ledger.totals
    await store.close(ledger)  # nothing changed since: no write
    assert store.saves == 2


def test_the_default_is_data_when_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(energy_store, "DATA_DIR", tmp_path)
    assert default_state_file() == tmp_path / STATE_FILE_NAME
    monkeypatch.setattr(energy_store, "DATA_DIR", tmp_path / "missing")
    assert default_state_file() == Path(STATE_FILE_NAME)
    if os.geteuid() != 0:  # root may write anywhere
        read_only = tmp_path / "ro"
        read_only.mkdir(mode=0o500)
        monkeypatch.setattr(energy_store, "DATA_DIR", read_only)
        assert default_state_file() == Path(STATE_FILE_NAME)
