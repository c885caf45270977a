"""The energy ledger's state file: a small JSON file, written atomically and not every cycle.

The file keeps the fleet energy totals and each battery's last counter values, so the totals
stay monotonic across restarts and battery changes (``engine.core.energy``). A write goes to
a temporary file in the same directory, is flushed to disk and renamed over the old one, so a
crash or power cut leaves either the old or the new file, never half of one. Saving at most
every ``save_interval_s`` loses nothing: after a restart the counters' rise since the saved
values is added then.

An unreadable or invalid file is moved aside (``<name>.invalid``) with one warning and the
ledger starts afresh; a failing write is logged once (and once when writing works again),
and control goes on with the totals in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Final

from engine.core.energy import EnergyLedger

_LOGGER = logging.getLogger(__name__)

STATE_FILE_NAME: Final = "mmbc-state.json"
# Home Assistant add-ons and the Docker image keep their state in /data.
DATA_DIR: Final = Path("/data")
DEFAULT_SAVE_INTERVAL_S: Final = 300.0


def default_state_file() -> Path:
    """``/data/mmbc-state.json`` if ``/data`` is writable, else ``./mmbc-state.json``."""
    if DATA_DIR.is_dir() and os.access(DATA_DIR, os.W_OK):
        return DATA_DIR / STATE_FILE_NAME
    return Path(STATE_FILE_NAME)


def _write_atomically(path: Path, text: str) -> None:
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    # The rename itself must reach the disk too; not every file system lets a directory be
    # opened for that, and the data is already safe in the file.
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class EnergyStateFile:
    """Loads and saves an ``EnergyLedger`` at ``path``."""

    def __init__(
        self, path: Path | None = None, *, save_interval_s: float = DEFAULT_SAVE_INTERVAL_S
    ) -> None:
        if save_interval_s < 0:
            msg = f"save_interval_s must be >= 0, got {save_interval_s}"
            raise ValueError(msg)
        self.path = default_state_file() if path is None else path
        self.save_interval_s = save_interval_s
        self.saves = 0  # successful writes
        self._saved_revision = 0  # a fresh or just loaded ledger has nothing new to save
        self._saved_s: float | None = None
        self._failing = False
        self._pending: asyncio.Future[bool] | None = None

    def load(self) -> EnergyLedger:
        """The saved ledger; a fresh one when there is no file or it cannot be used."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            _LOGGER.info("energy totals: no state file %s yet; starting afresh", self.path)
            return EnergyLedger()
        except OSError as exc:
            _LOGGER.warning("energy totals: cannot read %s (%s); starting afresh", self.path, exc)
            return EnergyLedger()
        try:
            ledger = EnergyLedger.from_json(json.loads(text))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            aside = self.path.with_name(self.path.name + ".invalid")
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            _LOGGER.warning(
                "energy totals: %s is not a valid state file (%s); moved to %s, starting afresh",
                self.path,
                exc,
                aside,
            )
            return EnergyLedger()
        self._saved_revision = ledger.revision
        return ledger

    def save(self, ledger: EnergyLedger) -> bool:
        """Write now (blocking; for the shutdown). False when it failed (logged)."""
        return self._write(json.dumps(ledger.to_json(), indent=1), ledger.revision)

    def _write(self, text: str, revision: int) -> bool:
        try:
            _write_atomically(self.path, text)
        except OSError as exc:
            if not self._failing:
                _LOGGER.warning(
                    "energy totals: cannot write %s (%s); keeping them in memory",
                    self.path,
                    exc,
                )
            self._failing = True
            return False
        if self._failing:
            _LOGGER.info("energy totals: writing %s works again", self.path)
        self._failing = False
        self._saved_revision = revision
        self.saves += 1
        return True

    def maybe_save(self, ledger: EnergyLedger, now_s: float) -> None:
        """Save in a worker thread if the ledger changed and the interval has passed.

        Never blocks the caller (an SD card's fsync can take a while); one save at a time.
        """
        if ledger.revision == self._saved_revision:
            return
        if self._saved_s is not None and now_s - self._saved_s < self.save_interval_s:
            return
        if self._pending is not None and not self._pending.done():
            return
        self._saved_s = now_s
        text = json.dumps(ledger.to_json(), indent=1)
        loop = asyncio.get_running_loop()
        self._pending = loop.run_in_executor(None, self._write, text, ledger.revision)

    async def close(self, ledger: EnergyLedger) -> bool:
        """Wait for a save in progress, then write the latest state (shutdown)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            with contextlib.suppress(Exception):
                await pending
        if ledger.revision == self._saved_revision:
            return True
        return await asyncio.to_thread(self.save, ledger)
