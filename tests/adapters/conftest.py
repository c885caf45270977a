"""Fixtures for the adapter tests: a simulated API v2 meter with its own test CA."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.adapters.homewizard_v2 import HomeWizardV2Client
from sim.plant.meter import P1MeterModel
from sim.plant.params import MeterParams
from sim.servers.homewizard_v2 import V2MeterServer, start_v2_meter_server
from sim.servers.tls import SimulatorCA
from tests.fakes import FakeClock

USER = "local/mmbc-tests"


@pytest.fixture(scope="session")
def simulator_ca() -> SimulatorCA:
    return SimulatorCA()


@pytest.fixture
def ca_file(simulator_ca: SimulatorCA, tmp_path: Path) -> Path:
    return simulator_ca.write_ca(tmp_path / "sim-ca.pem")


@pytest.fixture
def manual_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def v2_model(manual_clock: FakeClock) -> P1MeterModel:
    """A quiet P1 meter reading 750 W, its first sample visible at the clock's start."""
    model = P1MeterModel(MeterParams(noise_w=0.0), serial="5c2fafaabbcc")
    model.observe(0.0, 750.0)
    manual_clock.t_s = 0.5
    return model


@pytest.fixture
async def v2_server(
    v2_model: P1MeterModel, simulator_ca: SimulatorCA, manual_clock: FakeClock
) -> AsyncIterator[V2MeterServer]:
    server = await start_v2_meter_server(
        v2_model, simulator_ca, now=manual_clock.now, push_check_s=None
    )
    yield server
    await server.stop()


@pytest.fixture
async def v2_token(v2_server: V2MeterServer) -> str:
    return v2_server.add_user(USER)


@pytest.fixture
async def v2_client(
    v2_server: V2MeterServer, v2_token: str, ca_file: Path
) -> AsyncIterator[HomeWizardV2Client]:
    client = HomeWizardV2Client(
        f"127.0.0.1:{v2_server.port}",
        identifier=v2_server.identifier,
        token=v2_token,
        ca_file=ca_file,
        timeout_s=0.5,
    )
    yield client
    await client.close()
