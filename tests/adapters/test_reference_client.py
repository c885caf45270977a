"""Judged by a real client: HomeWizard's own python-homewizard-energy reads our simulators.

Its v2-capable releases need Python >= 3.12 while the project runs on 3.11, so the test builds
a venv with a 3.12+ interpreter found on this machine (cached in ``.cache/`` at the repository
root, git-ignored), installs the library there from the package index, and runs
``hwe_judge.py`` against our v1 and v2 servers on free loopback ports. Skips, saying why, when
no such interpreter exists or the install fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sim.plant.meter import P1MeterModel
from sim.plant.params import MeterParams
from sim.servers.homewizard import start_meter_server
from sim.servers.homewizard_v2 import start_v2_meter_server
from sim.servers.tls import SimulatorCA

pytestmark = pytest.mark.slow
LIBRARY = "python-homewizard-energy==10.2.0"
REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache"
JUDGE = Path(__file__).with_name("hwe_judge.py")
WANTED = ((3, 13), (3, 12))


def _version_of(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None  # e.g. a pyenv shim for a version that is not selected
    return (int(out[0]), int(out[1])) if len(out) == 2 else None


def find_python() -> tuple[str, tuple[int, int]] | None:
    """A working Python >= 3.12: on PATH, else in pyenv's versions (its shims refuse
    versions not selected globally)."""
    candidates = [shutil.which(f"python{major}.{minor}") for major, minor in WANTED]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    for major, minor in WANTED:
        candidates += [
            str(p) for p in sorted(pyenv_root.glob(f"versions/{major}.{minor}*/bin/python3"))
        ]
    for candidate in candidates:
        if candidate is None:
            continue
        version = _version_of(candidate)
        if version is not None and version >= (3, 12):
            return candidate, version
    return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One venv build at a time (another test run on this machine may be building it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def judge_python() -> Path:
    found = find_python()
    if found is None:
        pytest.skip("no Python >= 3.12 here: python-homewizard-energy's v2 releases need it")
    python, (major, minor) = found
    venv = CACHE / f"hwe-judge-py{major}.{minor}-{LIBRARY.split('==')[1]}"
    ready = venv / ".ready"
    venv_python = venv / "bin" / "python"
    with _locked(CACHE / ".hwe-judge.lock"):
        if not ready.exists():
            shutil.rmtree(venv, ignore_errors=True)
            try:
                subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120)
                subprocess.run(
                    [str(venv_python), "-m", "pip", "install", "-q", LIBRARY],
                    check=True,
                    timeout=300,
                    capture_output=True,
                )
            except (OSError, subprocess.SubprocessError) as err:
                shutil.rmtree(venv, ignore_errors=True)
                pytest.skip(f"cannot install {LIBRARY} for Python {major}.{minor}: {err}")
            ready.write_text(f"{python}\n{LIBRARY}\n")
    return venv_python


async def test_homewizards_own_library_reads_the_simulated_v1_and_v2_meters(
    judge_python: Path, tmp_path: Path
) -> None:
    ca = SimulatorCA()
    ca_file = ca.write_ca(tmp_path / "ca.pem")
    loop = asyncio.get_running_loop()
    model = P1MeterModel(MeterParams(noise_w=0.0), serial="5c2fafaabbcc")
    model.observe(loop.time() - 5.0, -543.0)  # exporting 543 W, as in HomeWizard's example
    v1 = await start_meter_server(model)
    v2 = await start_v2_meter_server(model, ca)
    config = {
        "v1": f"127.0.0.1:{v1.port}",
        "v2": f"127.0.0.1:{v2.port}",
        "identifier": v2.identifier,
        "ca_file": str(ca_file),
    }
    judge = await asyncio.create_subprocess_exec(
        str(judge_python),
        str(JUDGE),
        json.dumps(config),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert judge.stdin is not None
    assert judge.stdout is not None
    try:
        async with asyncio.timeout(120):
            line = await judge.stdout.readline()
            assert line.strip() == b"button?", line
            v2.press_button()
            judge.stdin.write(b"pressed\n")
            await judge.stdin.drain()
            out, err = await judge.communicate()
    finally:
        if judge.returncode is None:
            judge.kill()
            await judge.wait()
        await v1.stop()
        await v2.stop()
    assert judge.returncode == 0, err.decode()
    result = json.loads(out.decode().strip().splitlines()[-1])
    sample = model.latest(loop.time())
    assert sample is not None
    assert result["has_v2_api"] == {"v1": False, "v2": True}
    assert result["v1"].pop("api_version") in {"v1", "1.0.0"}  # the library's normal form
    assert result["v1"] == {
        "product_type": "HWE-P1",
        "serial": "5c2fafaabbcc",
        "power_w": -543.0,
        "power_l1_w": pytest.approx(-272.0),
        "energy_import_kwh": pytest.approx(sum(sample.import_kwh), abs=0.001),
        "energy_export_kwh": pytest.approx(sum(sample.export_kwh), abs=0.001),
    }
    assert result["token_before_press"] == "refused"
    assert result["v2"]["token_length"] == 32
    assert list(v2.users) == ["local/mmbc-judge"]
    assert result["v2"] | {"power_l1_w": None} == {
        "token_length": 32,
        "product_type": "HWE-P1",
        "serial": "5c2fafaabbcc",
        "api_version": "2.0.0",
        "power_w": -543.0,
        "power_l1_w": None,
        "energy_import_kwh": pytest.approx(sum(sample.import_kwh), abs=0.001),
        "energy_export_kwh": pytest.approx(sum(sample.export_kwh), abs=0.001),
        # The meter's clock is the loop's (time since boot here): the tariff of that hour.
        "tariff": sample.tariff,
        "api_v1_enabled": False,
    }
    assert result["v2"]["power_l1_w"] == result["v1"]["power_l1_w"]
    assert result["wrong_identifier"] != "accepted"  # the library checks our certificate too
