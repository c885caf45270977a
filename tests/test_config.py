"""Configuration: every source, the precedence between them, and every error naming its key."""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import re
import string
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.adapters.mqtt import MqttSettings as AdapterMqttSettings
from engine.config import (
    INTERNAL_FIELDS,
    NAMES,
    SECTIONS,
    build_config,
    config_error_exit_message,
    env_names,
    load_config,
    parse_dotenv,
    section_fields,
)
from engine.core.settings import POLICY_NAMES, BatterySpec, ControlSettings
from engine.errors import ConfigError
from engine.logs import QUIET_LOGGERS, setup_logging
from engine.settings import BatterySettings, EngineSettings, MeterApi
from tests.mqtt_broker import make_tls_files

_R = TypeVar("_R")

REPO = Path(__file__).resolve().parent.parent

# The product brief's .env, verbatim apart from the placeholder addresses.
BRIEF_ENV: dict[str, str] = {
    "P1_API_URL": "http://192.168.1.50/api/v1/data",
    "MQTT_HOST": "192.168.1.10",
    "MQTT_PORT": "1883",
    "MQTT_TOPIC_PREFIX": "mmbc/virtual",
    "BATTERY_1_IP": "192.168.1.101",
    "BATTERY_1_ADDRESS": "1",
    "BATTERY_2_IP": "192.168.1.102",
    "BATTERY_2_ADDRESS": "1",
}
MINIMAL_ENV: dict[str, str] = {
    "P1_API_URL": "http://192.168.1.50/api/v1/data",
    "BATTERY_1_IP": "192.168.1.101",
}


def env_config(**extra: str) -> EngineSettings:
    return build_config(environ={**MINIMAL_ENV, **extra})


def config_error(**kwargs: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        build_config(**kwargs)  # type: ignore[arg-type]
    return info.value


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def load(**kwargs: object) -> EngineSettings:
    """load_config that never picks up a stray ./.env or /data/options.json."""
    args: dict[str, object] = {"environ": {}, "discover_files": False}
    args.update(kwargs)
    return load_config(**args)  # type: ignore[arg-type]


# --- the environment --------------------------------------------------------------------------


def test_product_brief_env_gives_two_batteries_and_the_virtual_prefix() -> None:
    config = build_config(environ={**BRIEF_ENV, "PATH": "/usr/bin", "HOME": "/root"})

    assert config.meter.url == "http://192.168.1.50/api/v1/data"
    assert config.mqtt is not None
    assert config.mqtt.host == "192.168.1.10"
    assert config.mqtt.port == 1883
    assert config.mqtt.topic_prefix == "mmbc/virtual"
    assert config.mqtt.tls is False
    assert config.mqtt.discovery is True
    assert [(b.name, b.number, b.host, b.port, b.unit_id) for b in config.batteries] == [
        ("battery_1", 1, "192.168.1.101", 502, 1),
        ("battery_2", 2, "192.168.1.102", 502, 1),
    ]
    assert config.pv_meter is None
    assert config.dry_run is False
    assert (config.log.level, config.log.format) == ("INFO", "text")
    assert config.warnings == ()


def test_defaults_are_todays_behaviour() -> None:
    control = env_config().control_settings()

    assert control.split_threshold_w == 2500
    assert control.max_soc_pct == 100.0
    assert control.min_soc_pct == 11.0
    assert control.reselect_interval_s == 300.0
    assert control.policy == "mmbc"
    assert control.batteries == (BatterySpec("battery_1", 2500, 2500, 5120.0),)


def test_control_settings_carry_one_spec_per_battery() -> None:
    config = env_config(
        BATTERY_2_IP="192.168.1.102",
        BATTERY_2_MAX_CHARGE_W="1200",
        BATTERY_2_MAX_DISCHARGE_W="800",
        BATTERY_2_CAPACITY_WH="2560",
    )

    specs = config.control_settings().batteries
    assert specs == (
        BatterySpec("battery_1", 2500, 2500, 5120.0),
        BatterySpec("battery_2", 1200, 800, 2560.0),
    )


def test_any_battery_number_works() -> None:
    config = build_config(
        environ={
            "P1_API_URL": "http://192.168.1.50/api/v1/data",
            "BATTERY_7_IP": "192.168.1.107",
            "BATTERY_7_ADDRESS": "3",
            "BATTERY_7_PORT": "8899",
        }
    )

    assert config.batteries == (
        BatterySettings(number=7, host="192.168.1.107", port=8899, unit_id=3),
    )


def test_battery_numbering_may_have_gaps_and_is_ordered() -> None:
    config = env_config(BATTERY_12_IP="192.168.1.112", BATTERY_3_IP="192.168.1.103")

    assert [b.name for b in config.batteries] == ["battery_1", "battery_3", "battery_12"]


def test_per_battery_settings_are_read() -> None:
    config = env_config(
        BATTERY_1_MAX_CHARGE_W="2000",
        BATTERY_1_MAX_DISCHARGE_W="0",
        BATTERY_1_CAPACITY_WH="5120.5",
        BATTERY_1_MESSAGE_GAP_S="0.15",
        BATTERY_1_TIMEOUT_S="2.5",
    )

    battery = config.batteries[0]
    assert battery.max_charge_w == 2000
    assert battery.max_discharge_w == 0
    assert battery.capacity_wh == 5120.5
    assert battery.message_gap_s == 0.15
    assert battery.timeout_s == 2.5


@pytest.mark.parametrize(
    ("p1_host", "url"),
    [
        ("192.168.1.50", "http://192.168.1.50/api/v1/data"),
        ("http://192.168.1.50", "http://192.168.1.50/api/v1/data"),
        ("http://192.168.1.50/", "http://192.168.1.50/api/v1/data"),
        ("http://192.168.1.50/api", "http://192.168.1.50/api/v1/data"),
        ("http://192.168.1.50/api/v1/data", "http://192.168.1.50/api/v1/data"),
        ("p1meter.local:8080", "http://p1meter.local:8080/api/v1/data"),
    ],
)
def test_p1_host_becomes_the_data_url(p1_host: str, url: str) -> None:
    config = build_config(environ={"P1_HOST": p1_host, "BATTERY_1_IP": "192.168.1.101"})

    assert config.meter.url == url


def test_p1_api_url_wins_over_p1_host_with_a_warning() -> None:
    config = env_config(P1_HOST="192.168.1.99")

    assert config.meter.url == "http://192.168.1.50/api/v1/data"
    assert any("P1_HOST" in w for w in config.warnings)


def test_empty_value_means_not_set() -> None:
    config = env_config(MQTT_HOST="", MMBC_DEADBAND_W="  ", BATTERY_2_PORT="")

    assert config.mqtt is None
    assert config.control.deadband_w == ControlSettings().deadband_w
    assert len(config.batteries) == 1


def test_pv_meter_sign_is_configurable() -> None:
    default = env_config(PV_API_URL="http://192.168.1.60/api/v1/data")
    positive = env_config(
        PV_API_URL="http://192.168.1.60/api/v1/data", PV_NEGATIVE_WHEN_PRODUCING="false"
    )

    assert default.pv_meter is not None
    assert default.pv_meter.url == "http://192.168.1.60/api/v1/data"
    assert default.pv_meter.negative_when_producing is True
    assert positive.pv_meter is not None
    assert positive.pv_meter.negative_when_producing is False


def test_pv_settings_without_url_are_ignored_with_a_warning() -> None:
    config = env_config(PV_NEGATIVE_WHEN_PRODUCING="false")

    assert config.pv_meter is None
    assert any("PV_NEGATIVE_WHEN_PRODUCING" in w for w in config.warnings)


def test_mqtt_settings_are_read() -> None:
    config = env_config(
        MQTT_HOST="broker.lan",
        MQTT_USERNAME="mmbc",
        MQTT_PASSWORD="s3cret",
        MQTT_DISCOVERY="off",
        MQTT_DISCOVERY_PREFIX="ha",
        MQTT_MIN_INTERVAL_S="1",
        MQTT_MAX_INTERVAL_S="30",
        MQTT_CLIENT_ID="mmbc-test",
    )

    mqtt = config.mqtt
    assert mqtt is not None
    assert (mqtt.host, mqtt.port, mqtt.username, mqtt.password_text()) == (
        "broker.lan",
        1883,
        "mmbc",
        "s3cret",
    )
    assert (mqtt.discovery, mqtt.discovery_prefix) == (False, "ha")
    assert (mqtt.min_interval_s, mqtt.max_interval_s) == (1.0, 30.0)
    assert mqtt.client_id == "mmbc-test"
    assert mqtt.topic_prefix == "mmbc"


def test_mqtt_ca_file_turns_tls_on_and_defaults_the_port_to_8883(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    if tls is None:
        pytest.skip("needs the openssl command to make a CA certificate")

    config = env_config(MQTT_HOST="broker.lan", MQTT_CA_FILE=tls.certfile)
    explicit = env_config(MQTT_HOST="broker.lan", MQTT_TLS="true", MQTT_PORT="8884")

    assert config.mqtt is not None
    assert (config.mqtt.tls, config.mqtt.port) == (True, 8883)
    assert config.mqtt.tls_ca_file == Path(tls.certfile)
    assert config.mqtt.ssl_context() is not None
    assert explicit.mqtt is not None
    assert (explicit.mqtt.tls, explicit.mqtt.port) == (True, 8884)


def test_upstream_ha_discovery_name_is_accepted() -> None:
    assert env_config(MQTT_HOST="broker.lan", MQTT_HA_DISCOVERY="false").mqtt.discovery is False  # type: ignore[union-attr]
    both = env_config(MQTT_HOST="broker.lan", MQTT_HA_DISCOVERY="false", MQTT_DISCOVERY="true")
    assert both.mqtt is not None
    assert both.mqtt.discovery is True


def test_upstream_names_without_meaning_are_warnings_not_errors() -> None:
    config = env_config(INTERVAL_SECONDS="3", SELF_CONTROL_AVAILABLE="true")

    assert config.control.loop_period_s == ControlSettings().loop_period_s
    assert {w.split(":")[0] for w in config.warnings} == {
        "INTERVAL_SECONDS",
        "SELF_CONTROL_AVAILABLE",
    }


@pytest.mark.parametrize("name", sorted(ControlSettings.field_names()))
def test_every_control_setting_has_an_mmbc_variable(name: str) -> None:
    default = getattr(ControlSettings(), name)
    value = "classic" if name == "policy" else str(default)

    config = env_config(**{f"MMBC_{name.upper()}": value})

    expected = "classic" if name == "policy" else default
    assert getattr(config.control, name) == expected
    assert type(getattr(config.control, name)) is type(default)


def test_control_thresholds_are_read_from_the_environment() -> None:
    config = env_config(
        MMBC_SPLIT_THRESHOLD_W="3000",
        MMBC_MIN_SOC_PCT="15",
        MMBC_MAX_SOC_PCT="95.5",
        MMBC_RESELECT_INTERVAL_S="120",
        MMBC_LOOP_PERIOD_S="0.5",
        MMBC_DEADBAND_W="40",
        MMBC_GRID_TARGET_W="-50",
        MMBC_POLICY="Classic",
        MMBC_LOG_LEVEL="debug",
        MMBC_LOG_FORMAT="json",
        MMBC_DRY_RUN="yes",
    )

    c = config.control
    assert (c.split_threshold_w, c.min_soc_pct, c.max_soc_pct) == (3000, 15.0, 95.5)
    assert (c.reselect_interval_s, c.loop_period_s) == (120.0, 0.5)
    assert (c.deadband_w, c.grid_target_w, c.policy) == (40, -50, "classic")
    assert (config.log.level, config.log.format, config.dry_run) == ("DEBUG", "json", True)


def test_the_state_file_is_a_setting(tmp_path: Path) -> None:
    assert env_config().state_file is None  # the engine picks /data or the working directory
    config = env_config(MMBC_STATE_FILE=str(tmp_path / "new" / "state.json"))
    assert config.state_file == tmp_path / "new" / "state.json"  # need not exist yet
    with pytest.raises(ConfigError, match=r"MMBC_STATE_FILE.*expected a file name"):
        env_config(MMBC_STATE_FILE=str(tmp_path))


# --- files ----------------------------------------------------------------------------------

FULL_TOML = """
dry_run = true

[meter]
url = "http://192.168.1.50/api/v1/data"
timeout_s = 3

[pv_meter]
url = "http://192.168.1.60/api/v1/data"
negative_when_producing = false

[[battery]]
host = "192.168.1.101"
unit_id = 2

[[battery]]
host = "192.168.1.102"
port = 5020
max_charge_w = 1500

[mqtt]
host = "192.168.1.10"
topic_prefix = "home/mmbc"
username = "mmbc"
password = "pw"

[control]
split_threshold_w = 2000
min_soc_pct = 20
deadband_w = 25

[log]
level = "warning"
format = "json"
"""


def test_toml_file_sets_everything(tmp_path: Path) -> None:
    config = load(config_file=write(tmp_path / "mmbc.toml", FULL_TOML))

    assert config.meter.url == "http://192.168.1.50/api/v1/data"
    assert config.meter.timeout_s == 3.0
    assert config.pv_meter is not None
    assert config.pv_meter.negative_when_producing is False
    assert [(b.name, b.host, b.port, b.unit_id, b.max_charge_w) for b in config.batteries] == [
        ("battery_1", "192.168.1.101", 502, 2, 2500),
        ("battery_2", "192.168.1.102", 5020, 1, 1500),
    ]
    assert config.mqtt is not None
    assert (config.mqtt.topic_prefix, config.mqtt.password_text()) == ("home/mmbc", "pw")
    assert config.control.split_threshold_w == 2000
    assert config.control.min_soc_pct == 20.0
    assert config.control.deadband_w == 25
    assert (config.log.level, config.log.format, config.dry_run) == ("WARNING", "json", True)
    assert config.sources == ("environment", str(tmp_path / "mmbc.toml"))


def test_mmbc_config_variable_names_the_toml_file(tmp_path: Path) -> None:
    path = write(tmp_path / "mmbc.toml", FULL_TOML)

    config = load(environ={"MMBC_CONFIG": str(path)})

    assert config.control.split_threshold_w == 2000


UPSTREAM_DOTENV = """\
# MMBC Environment Configuration

# HomeWizard P1 Meter
P1_HOST=http://192.168.1.50

# Battery 1
BATTERY_1_IP=192.168.1.101
BATTERY_1_ADDRESS=1
BATTERY_1_PORT = 502  # Default port for Modbus TCP

#BATTERY_2_IP=192.168.1.102

MQTT_HOST=192.168.1.10
MQTT_PORT=1883
MQTT_TOPIC_PREFIX=mmbc/virtual
MQTT_HA_DISCOVERY=true
MQTT_USERNAME = "mmbc"
MQTT_PASSWORD = 'p#ss "word"'
export MMBC_DEADBAND_W=30

# General Settings
INTERVAL_SECONDS=3
"""


def test_upstream_dotenv_file_is_read(tmp_path: Path) -> None:
    dotenv = write(tmp_path / ".env", UPSTREAM_DOTENV)

    config = load(dotenv_file=dotenv)

    assert config.meter.url == "http://192.168.1.50/api/v1/data"
    assert [(b.host, b.port, b.unit_id) for b in config.batteries] == [("192.168.1.101", 502, 1)]
    assert config.mqtt is not None
    assert (config.mqtt.username, config.mqtt.password_text()) == ("mmbc", 'p#ss "word"')
    assert config.mqtt.topic_prefix == "mmbc/virtual"
    assert config.control.deadband_w == 30
    assert any(w.startswith("INTERVAL_SECONDS") for w in config.warnings)


def test_default_files_are_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / ".env", "P1_HOST=192.168.1.50\nBATTERY_1_IP=192.168.1.101\n")
    options = write(tmp_path / "options.json", '{"deadband_w": 44}')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("engine.config.DEFAULT_OPTIONS_FILE", options)

    config = load_config(environ={})

    assert config.batteries[0].host == "192.168.1.101"
    assert config.control.deadband_w == 44
    assert config.sources == ("environment", ".env", str(options))


def test_default_files_are_skipped_when_absent_or_not_wanted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / ".env", "MMBC_DEADBAND_W=bad\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("engine.config.DEFAULT_OPTIONS_FILE", tmp_path / "absent.json")

    config = load_config(environ=MINIMAL_ENV, discover_files=False)

    assert config.sources == ("environment",)
    with pytest.raises(ConfigError, match="MMBC_DEADBAND_W"):
        load_config(environ=MINIMAL_ENV)


def test_parse_dotenv_handles_quotes_comments_and_export() -> None:
    text = (
        "\ufeff# comment\n"
        "\n"
        "A=1\n"
        "export B = two words  # trailing comment\n"
        'C="quoted # not a comment\\n" # comment\n'
        "D='single $HOME'\n"
        "E=a#b\n"
        "F=\n"
        "A=3\n"
    )

    assert parse_dotenv(text) == {
        "A": "3",
        "B": "two words",
        "C": "quoted # not a comment\n",
        "D": "single $HOME",
        "E": "a#b",
        "F": "",
    }


OPTIONS = {
    "p1_host": "192.168.1.50",
    "mqtt_host": "192.168.1.10",
    "mqtt_username": "",
    "mqtt_topic_prefix": "mmbc/virtual",
    "batteries": [
        {"ip": "192.168.1.101", "address": 1},
        {"ip": "192.168.1.102", "address": 2, "port": 5020},
    ],
    "split_threshold_w": 2000,
    "log_level": "debug",
}


def test_home_assistant_options_json(tmp_path: Path) -> None:
    options = write(tmp_path / "options.json", json.dumps(OPTIONS))

    config = load(options_file=options)

    assert config.meter.url == "http://192.168.1.50/api/v1/data"
    assert [(b.name, b.host, b.port, b.unit_id) for b in config.batteries] == [
        ("battery_1", "192.168.1.101", 502, 1),
        ("battery_2", "192.168.1.102", 5020, 2),
    ]
    assert config.mqtt is not None
    assert config.mqtt.username is None  # "" is "not set"
    assert config.mqtt.topic_prefix == "mmbc/virtual"
    assert config.control.split_threshold_w == 2000
    assert config.log.level == "DEBUG"


def test_options_json_empty_battery_list_and_flat_keys_work_together() -> None:
    config = build_config(
        options={"p1_host": "192.168.1.50", "batteries": [], "battery_2_ip": "192.168.1.102"}
    )

    assert [b.name for b in config.batteries] == ["battery_2"]


def test_upstream_style_options_json_with_env_names() -> None:
    config = build_config(
        options={
            "P1_HOST": "http://192.168.1.50",
            "BATTERY_1_IP": "192.168.1.101",
            "BATTERY_1_ADDRESS": 2,
            "BATTERY_1_PORT": 502,
            "MQTT_HOST": "192.168.1.10",
            "MQTT_PORT": 1883,
            "MQTT_TOPIC_PREFIX": "mmbc/virtual",
            "MMBC_DEADBAND_W": 35,
        }
    )

    assert config.batteries[0].unit_id == 2
    assert config.mqtt is not None
    assert config.mqtt.topic_prefix == "mmbc/virtual"
    assert config.control.deadband_w == 35


# --- precedence -----------------------------------------------------------------------------


@pytest.fixture
def four_sources(tmp_path: Path) -> dict[str, object]:
    """Every source sets the deadband to a different value; only options.json sets the rest."""
    options = dict(OPTIONS, deadband_w=4)
    return {
        "environ": {"MMBC_DEADBAND_W": "1"},
        "dotenv_file": write(tmp_path / ".env", "MMBC_DEADBAND_W=2\n"),
        "config_file": write(tmp_path / "mmbc.toml", "[control]\ndeadband_w = 3\n"),
        "options_file": write(tmp_path / "options.json", json.dumps(options)),
    }


@pytest.mark.parametrize(
    ("dropped", "deadband_w"),
    [
        ((), 1),
        (("environ",), 2),
        (("environ", "dotenv_file"), 3),
        (("environ", "dotenv_file", "config_file"), 4),
    ],
)
def test_precedence_env_then_dotenv_then_toml_then_options(
    four_sources: dict[str, object], dropped: tuple[str, ...], deadband_w: int
) -> None:
    kwargs = dict(four_sources)
    for name in dropped:
        kwargs[name] = {} if name == "environ" else None

    assert load(**kwargs).control.deadband_w == deadband_w


def test_defaults_apply_when_no_source_sets_a_value(four_sources: dict[str, object]) -> None:
    config = load(**four_sources)

    assert config.control.min_soc_pct == 11.0
    assert config.sources[0] == "environment"
    assert len(config.sources) == 4


def test_batteries_merge_by_number_across_sources(tmp_path: Path) -> None:
    toml = write(tmp_path / "mmbc.toml", FULL_TOML)

    config = load(
        config_file=toml,
        environ={"BATTERY_2_PORT": "6000", "BATTERY_3_IP": "192.168.1.103"},
    )

    assert [(b.name, b.host, b.port, b.max_charge_w) for b in config.batteries] == [
        ("battery_1", "192.168.1.101", 502, 2500),
        ("battery_2", "192.168.1.102", 6000, 1500),
        ("battery_3", "192.168.1.103", 502, 2500),
    ]


def test_p1_host_in_the_environment_beats_url_in_the_toml(tmp_path: Path) -> None:
    toml = write(tmp_path / "mmbc.toml", FULL_TOML)

    config = load(config_file=toml, environ={"P1_HOST": "192.168.1.77"})

    assert config.meter.url == "http://192.168.1.77/api/v1/data"


# --- errors ---------------------------------------------------------------------------------

ENV_ERRORS: list[tuple[dict[str, str], str, str]] = [
    ({"MMBC_DEADBAND_W": "abc"}, "MMBC_DEADBAND_W", "expected an integer, got 'abc'"),
    ({"MMBC_DEADBAND_W": "2.5"}, "MMBC_DEADBAND_W", "expected an integer"),
    ({"MMBC_LOOP_PERIOD_S": "fast"}, "MMBC_LOOP_PERIOD_S", "expected a number"),
    ({"MMBC_LOOP_PERIOD_S": "nan"}, "MMBC_LOOP_PERIOD_S", "expected a number"),
    ({"MMBC_LOOP_PERIOD_S": "0"}, "MMBC_LOOP_PERIOD_S", "between 0.1 and 60, got 0"),
    ({"MMBC_RESELECT_INTERVAL_S": "-5"}, "MMBC_RESELECT_INTERVAL_S", "greater than 0"),
    ({"MMBC_MIN_SOC_PCT": "101"}, "MMBC_MIN_SOC_PCT", "between 0 and 100"),
    ({"MMBC_MIN_SOC_PCT": "60", "MMBC_MAX_SOC_PCT": "50"}, "MMBC_MIN_SOC_PCT", "below"),
    ({"MMBC_MAX_SOC_PCT": "11"}, "MMBC_MAX_SOC_PCT", "below"),
    ({"MMBC_POLICY": "greedy"}, "MMBC_POLICY", "expected one of mmbc, classic"),
    ({"MMBC_SPLIT_THRESHOLD_W": "-1"}, "MMBC_SPLIT_THRESHOLD_W", "between 0 and"),
    ({"MMBC_DEADBND_W": "20"}, "MMBC_DEADBND_W", "unknown setting (did you mean MMBC_DEADBAND_W?)"),
    ({"MMBC_LOG_LEVEL": "loud"}, "MMBC_LOG_LEVEL", "expected one of"),
    ({"MMBC_LOG_FORMAT": "xml"}, "MMBC_LOG_FORMAT", "expected one of text, json"),
    ({"MMBC_DRY_RUN": "maybe"}, "MMBC_DRY_RUN", "expected true or false, got 'maybe'"),
    ({"MMBC_NOT_FOLLOWING_CYCLES": "0"}, "MMBC_NOT_FOLLOWING_CYCLES", "at least 1"),
    ({"BATTERY_1_PORT": "70000"}, "BATTERY_1_PORT", "between 1 and 65535, got 70000"),
    ({"BATTERY_1_PORT": "0"}, "BATTERY_1_PORT", "between 1 and 65535"),
    ({"BATTERY_1_ADDRESS": "248"}, "BATTERY_1_ADDRESS", "between 0 and 247"),
    ({"BATTERY_1_ADDRESS": "one"}, "BATTERY_1_ADDRESS", "expected an integer"),
    ({"BATTERY_1_MAX_CHARGE_W": "2501"}, "BATTERY_1_MAX_CHARGE_W", "between 0 and 2500"),
    ({"BATTERY_1_MAX_DISCHARGE_W": "-1"}, "BATTERY_1_MAX_DISCHARGE_W", "between 0 and 2500"),
    ({"BATTERY_1_TIMEOUT_S": "0"}, "BATTERY_1_TIMEOUT_S", "greater than 0"),
    ({"BATTERY_1_IP": "http://192.168.1.101"}, "BATTERY_1_IP", "not a URL"),
    ({"BATTERY_1_IP": "192.168.1.101 502"}, "BATTERY_1_IP", "host name or IP address"),
    ({"BATTERY_1_IP": "192.168.1.101:502"}, "BATTERY_1_IP", "without a port"),
    ({"MQTT_HOST": "192.168.1.10:1883"}, "MQTT_HOST", "without a port"),
    ({"BATTERY_3_PORT": "502"}, "BATTERY_3_PORT", "battery 3 has no IP address"),
    ({"BATTERY_2_ADDRESS": "2"}, "BATTERY_2_ADDRESS", "battery 2 has no IP address"),
    ({"BATTERY_1_ADRESS": "2"}, "BATTERY_1_ADRESS", "did you mean BATTERY_1_ADDRESS?"),
    ({"BATTERY_0_IP": "192.168.1.100"}, "BATTERY_0_IP", "battery numbers run from 1"),
    ({"BATTERY_2_IP": "192.168.1.101"}, "BATTERY_2_IP", "same device as battery_1"),
    ({"P1_API_URL": "http://192.168.1.50"}, "P1_API_URL", "full URL"),
    ({"P1_API_URL": "ftp://192.168.1.50/api/v1/data"}, "P1_API_URL", "http://"),
    ({"P1_API_URL": "http://192.168.1.50:99999/api/v1/data"}, "P1_API_URL", "port"),
    ({"PV_API_URL": "192.168.1.60"}, "PV_API_URL", "http://"),
    ({"PV_API_URL": "http://192.168.1.60/api/v1/data", "MMBC_PV_TIMEOUT_S": "0"},
     "MMBC_PV_TIMEOUT_S", "greater than 0"),
    ({"MQTT_HOST": "broker", "MQTT_PORT": "abc"}, "MQTT_PORT", "expected an integer, got 'abc'"),
    ({"MQTT_HOST": "broker", "MQTT_TLS": "sure"}, "MQTT_TLS", "expected true or false"),
    ({"MQTT_HOST": "broker", "MQTT_PASSWORD": "pw"}, "MQTT_PASSWORD", "without a user name"),
    ({"MQTT_HOST": "broker", "MQTT_CA_FILE": "/nonexistent/ca.pem"}, "MQTT_CA_FILE",
     "file not found"),
    ({"MQTT_HOST": "broker", "MQTT_TOPIC_PREFIX": "mmbc/#"}, "MQTT_TOPIC_PREFIX", "wildcards"),
    ({"MQTT_HOST": "broker", "MQTT_TOPIC_PREFIX": "mmbc/"}, "MQTT_TOPIC_PREFIX", "'/'"),
    ({"MQTT_HOST": "broker", "MQTT_MIN_INTERVAL_S": "10", "MQTT_MAX_INTERVAL_S": "5"},
     "MQTT_MAX_INTERVAL_S", "below the minimum"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "key", "problem"), ENV_ERRORS)
def test_invalid_environment_names_the_key(extra: dict[str, str], key: str, problem: str) -> None:
    err = config_error(environ={**MINIMAL_ENV, **extra})

    assert err.key == key
    assert problem in err.problem
    assert str(err).startswith(f"{key}: ")


def test_without_a_p1_address_the_meter_is_found_on_the_network() -> None:
    config = build_config(environ={"BATTERY_1_IP": "192.168.1.101"})

    assert (config.meter.url, config.meter.host) == (None, None)
    assert config.meter.api is MeterApi.AUTO
    assert config.meter.push
    assert "found by mDNS" in config.describe()


def test_no_battery_is_an_error_naming_battery_1_ip() -> None:
    err = config_error(environ={"P1_API_URL": "http://192.168.1.50/api/v1/data"})

    assert err.key == "BATTERY_1_IP"
    assert "no battery" in err.problem


def test_mqtt_ca_file_with_tls_off_is_an_error(tmp_path: Path) -> None:
    ca = write(tmp_path / "ca.pem", "x")

    err = config_error(
        environ={**MINIMAL_ENV, "MQTT_HOST": "b", "MQTT_CA_FILE": str(ca), "MQTT_TLS": "false"}
    )

    assert err.key == "MQTT_CA_FILE"
    assert "TLS is off" in err.problem


TOML_ERRORS: list[tuple[str, str, str]] = [
    ("[control]\ndeadbnd_w = 3\n", "control.deadbnd_w", "unknown setting"),
    ("[control]\ndeadband_w = 'abc'\n", "control.deadband_w", "expected an integer, got 'abc'"),
    ("[control]\ndeadband_w = true\n", "control.deadband_w", "expected an integer, got true"),
    ("[control]\nmin_soc_pct = 120\n", "control.min_soc_pct", "between 0 and 100, got 120"),
    ("[contrl]\ndeadband_w = 3\n", "contrl", "did you mean control?"),
    ("control = 3\n", "control", "expected a table"),
    ("[battery]\nhost = '192.168.1.101'\n", "battery", "[[battery]]"),
    ("[[battery]]\nhost = '192.168.1.101'\nprot = 502\n", "battery[0].prot", "did you mean port?"),
    ("[[battery]]\n[[battery]]\nport = 502\n", "battery[1].port", "battery 2 has no IP address"),
    ("[[battery]]\nhost = '192.168.1.101'\nunit_id = 300\n", "battery[0].unit_id", "0 and 247"),
    ("[mqtt]\nhost = 'b'\nport = [1883]\n", "mqtt.port", "expected an integer"),
    ("[mqtt]\nhost = 5\n", "mqtt.host", "expected a string, got 5"),
    ("[log]\nlevel = 'chatty'\n", "log.level", "expected one of"),
    ("dry_run = 'perhaps'\n", "dry_run", "expected true or false"),
]


@pytest.mark.parametrize(("text", "key", "problem"), TOML_ERRORS)
def test_invalid_toml_names_the_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    path = write(tmp_path / "mmbc.toml", text)

    with pytest.raises(ConfigError) as info:
        load(config_file=path, environ=MINIMAL_ENV)

    assert info.value.key == key
    assert problem in info.value.problem


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "mmbc.toml", "[control\n")

    with pytest.raises(ConfigError) as info:
        load(config_file=path, environ=MINIMAL_ENV)

    assert info.value.key == str(path)
    assert info.value.problem.startswith("invalid TOML")


@pytest.mark.parametrize("arg", ["config_file", "dotenv_file", "options_file"])
def test_an_explicit_missing_file_is_an_error(tmp_path: Path, arg: str) -> None:
    missing = tmp_path / "missing"

    with pytest.raises(ConfigError) as info:
        load(environ=MINIMAL_ENV, **{arg: missing})

    assert info.value.key == str(missing)
    assert info.value.problem == "file not found"


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("A=1\nnot a setting\n", "x.env:2", "expected KEY=VALUE"),
        ("1A=1\n", "x.env:1", "expected KEY=VALUE"),
        ('A="open\n', "x.env:1 (A)", "unterminated double quote"),
        ("A='open\n", "x.env:1 (A)", "unterminated single quote"),
        ("A='x' y\n", "x.env:1 (A)", "after the closing quote"),
    ],
)
def test_malformed_dotenv_names_file_and_line(text: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_dotenv(text, source="x.env")

    assert info.value.key == key
    assert problem in info.value.problem


OPTIONS_ERRORS: list[tuple[dict[str, object], str, str]] = [
    ({"deadbnd_w": 3}, "deadbnd_w", "did you mean deadband_w?"),
    ({"split_threshold_w": "many"}, "split_threshold_w", "expected an integer"),
    ({"batteries": {"ip": "192.168.1.101"}}, "batteries", "expected a list"),
    ({"batteries": ["192.168.1.101"]}, "batteries[0]", "expected an object"),
    ({"batteries": [{"ip": "192.168.1.101", "prot": 1}]}, "batteries[0].prot", "unknown"),
    ({"batteries": [{"ip": "192.168.1.101", "host": "x"}]}, "batteries[0].ip", "same setting"),
    ({"batteries": [{"port": 502}]}, "batteries[0].port", "battery 1 has no IP address"),
    ({"batteries": [{"ip": "192.168.1.101"}], "battery_2_ip": "192.168.1.102"},
     "battery_2_ip", "either"),
    ({"p1_host": "192.168.1.50", "P1_HOST": "192.168.1.51"}, "p1_host", "same setting"),
    ({"config": "/etc/mmbc.toml"}, "config", "unknown setting"),
]  # fmt: skip


@pytest.mark.parametrize(("options", "key", "problem"), OPTIONS_ERRORS)
def test_invalid_options_json_names_the_key(
    options: dict[str, object], key: str, problem: str
) -> None:
    base: dict[str, object] = {"p1_api_url": "http://192.168.1.50/api/v1/data"}
    if not any("batter" in k for k in options):
        base["battery_1_ip"] = "192.168.1.101"

    err = config_error(options={**base, **options})

    assert err.key == key
    assert problem in err.problem


def test_options_json_must_be_an_object(tmp_path: Path) -> None:
    path = write(tmp_path / "options.json", "[1, 2]")

    with pytest.raises(ConfigError) as info:
        load(options_file=path)

    assert info.value.key == str(path)


def test_exit_message_is_one_line_naming_key_and_problem() -> None:
    message = config_error_exit_message(ConfigError("MMBC_DEADBAND_W", "expected an integer"))

    assert "\n" not in message
    assert "MMBC_DEADBAND_W: expected an integer" in message


# --- secrets, docs --------------------------------------------------------------------------


def test_password_never_appears_in_repr_or_describe() -> None:
    config = env_config(MQTT_HOST="broker", MQTT_USERNAME="mmbc", MQTT_PASSWORD="hunter2-secret")

    assert config.mqtt is not None
    assert config.mqtt.password_text() == "hunter2-secret"
    assert "hunter2-secret" not in repr(config)
    assert "hunter2-secret" not in str(config.mqtt)
    assert "hunter2-secret" not in config.describe()
    assert "password set" in config.describe()


def test_the_mqtt_settings_are_the_adapters_own() -> None:
    config = env_config(
        MQTT_HOST="broker.lan",
        MQTT_USERNAME="mmbc",
        MQTT_PASSWORD="pw",
        MQTT_TOPIC_PREFIX="mmbc/virtual",
        MQTT_MIN_INTERVAL_S="2",
    )

    settings = config.mqtt

    assert isinstance(settings, AdapterMqttSettings)
    assert (settings.host, settings.port, settings.username, settings.password_text()) == (
        "broker.lan",
        1883,
        "mmbc",
        "pw",
    )
    assert (settings.topic_prefix, settings.min_interval_s) == ("mmbc/virtual", 2.0)
    assert settings.client_id == "mmbc-engine-mmbc_virtual"  # derived from the prefix
    assert env_config().mqtt is None


def test_describe_lists_the_changed_thresholds() -> None:
    text = env_config(MMBC_DEADBAND_W="33").describe()

    assert "deadband_w=33" in text
    assert "battery_1: 192.168.1.101:502 unit 1" in text


def _documented(name: str) -> str:
    return name.replace("BATTERY_1_", "BATTERY_<n>_")


@pytest.mark.parametrize("doc", ["docs/configuration.md", ".env.example"])
def test_every_variable_is_documented(doc: str) -> None:
    text = (REPO / doc).read_text(encoding="utf-8")

    missing = sorted(n for n in env_names() if n not in text and _documented(n) not in text)

    assert missing == []


def _render_module() -> Any:
    path = REPO / "scripts" / "render_config_reference.py"
    spec = importlib.util.spec_from_file_location("render_config_reference", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_setting_tables_are_generated_from_the_models() -> None:
    committed = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")

    expected = _render_module().render(committed)

    assert committed.count("<!-- generated: ") == 7
    assert committed == expected, "run: python scripts/render_config_reference.py"


def test_every_model_field_is_a_documented_setting_or_internal() -> None:
    docs = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    named = {name.path for name in NAMES}

    unnamed = [
        (section, field)
        for section in SECTIONS
        for field in section_fields(section)
        if (section, field) not in named and (section, field) not in INTERNAL_FIELDS
    ]
    undocumented = [n.env for n in NAMES if f"`{n.env}`" not in docs.replace("BATTERY_<n>_", "")]

    assert unnamed == []
    assert undocumented == []
    assert all(section_fields(n.section)[n.field].description for n in NAMES if n.field != "host"
               or n.section != "meter")  # fmt: skip


def test_env_example_shows_each_default() -> None:
    """A commented ``#KEY=value`` with a default: setting it changes nothing."""
    text = (REPO / ".env.example").read_text(encoding="utf-8")
    base = parse_dotenv(text)
    plain = build_config(environ=base)
    defaults = {
        name.env if name.section != "battery" else f"BATTERY_1_{name.env}": name
        for name in NAMES
        if name.path != ("meter", "host")
        and section_fields(name.section)[name.field].get_default(call_default_factory=True)
        is not None
    }
    checked = []
    for key, value in re.findall(r"^#([A-Z0-9_]+)=(\S*)$", text, re.MULTILINE):
        if key in defaults and not key.startswith("PV_") and key != "MMBC_PV_TIMEOUT_S":
            config = build_config(environ={**base, key: value})
            assert config == plain, key
            checked.append(key)

    assert len(checked) > 40


def test_env_example_is_a_valid_configuration() -> None:
    """.env.example, as docker --env-file would pass it (no quotes, no inline comments)."""
    text = (REPO / ".env.example").read_text(encoding="utf-8")
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert re.fullmatch(r"[A-Z0-9_]+=[^\"'#\s]*", line), line

    config = build_config(environ=parse_dotenv(text))

    assert config.mqtt is not None
    assert config.mqtt.topic_prefix == "mmbc/virtual"
    assert len(config.batteries) == 2


# --- fuzz: anything in, EngineSettings or ConfigError out ------------------------------------

_KNOWN_ENV = sorted(n for n in env_names() if not n.startswith("BATTERY_1_") and n != "MMBC_CONFIG")
_BATTERY_SUFFIXES = ["IP", "ADDRESS", "PORT", "MAX_CHARGE_W", "MAX_DISCHARGE_W", "CAPACITY_WH",
                     "MESSAGE_GAP_S", "TIMEOUT_S", "IPP", ""]  # fmt: skip
_env_keys = st.one_of(
    st.sampled_from(_KNOWN_ENV),
    st.builds(
        "BATTERY_{}_{}".format,
        st.sampled_from(["1", "2", "3", "0", "01", "12", "9999"]),
        st.sampled_from(_BATTERY_SUFFIXES),
    ),
    st.text(alphabet=string.ascii_uppercase + "_", min_size=1, max_size=12).map("MMBC_".__add__),
    st.text(max_size=12),
)
_env_values = st.one_of(
    st.text(max_size=20),
    st.integers(min_value=-(10**6), max_value=10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["true", "false", "192.168.1.101", "http://192.168.1.50/api/v1/data",
                     "mmbc", "classic", "json", "", " ", "9" * 5000]),
)  # fmt: skip
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(["192.168.1.101", "http://192.168.1.50/api/v1/data", "true"]),
)
_toml_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(
            st.one_of(
                st.sampled_from(["host", "port", "url", "unit_id", "ip"]), st.text(max_size=8)
            ),
            children,
            max_size=4,
        ),
    ),
    max_leaves=10,
)
_toml_keys = st.one_of(
    st.sampled_from(["meter", "pv_meter", "battery", "mqtt", "control", "log", "dry_run",
                     "batteries", "p1_host", "deadband_w", "battery_1_ip", "BATTERY_1_IP"]),
    st.text(max_size=10),
)  # fmt: skip


def _outcome(call: Callable[[], _R]) -> _R | ConfigError:
    """The call's result, or the ConfigError it raised; any other exception fails the test."""
    try:
        return call()
    except ConfigError as err:
        return err


def _accepts_or_config_error(**kwargs: object) -> None:
    outcome = _outcome(lambda: build_config(**kwargs))  # type: ignore[arg-type]
    if isinstance(outcome, ConfigError):
        assert outcome.key
        assert outcome.problem
        return
    assert outcome.batteries
    assert outcome.control.min_soc_pct < outcome.control.max_soc_pct
    assert outcome.control.policy in POLICY_NAMES


@settings(max_examples=300, deadline=None)
@given(extra=st.dictionaries(_env_keys, _env_values, max_size=8), base=st.booleans())
def test_any_environment_gives_a_config_or_a_config_error(
    extra: dict[str, str], base: bool
) -> None:
    _accepts_or_config_error(environ={**(BRIEF_ENV if base else {}), **extra})


@settings(max_examples=200, deadline=None)
@given(
    toml=st.dictionaries(_toml_keys, _toml_values, max_size=5),
    options=st.dictionaries(_toml_keys, _toml_values, max_size=5),
)
def test_any_toml_or_options_document_gives_a_config_or_a_config_error(
    toml: dict[str, object], options: dict[str, object]
) -> None:
    _accepts_or_config_error(environ=MINIMAL_ENV, toml=toml)
    _accepts_or_config_error(toml=toml, options=options)
    _accepts_or_config_error(options=options)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(alphabet=st.sampled_from(list("AB_=#'\" \\\n\texport1")), max_size=60))
def test_any_dotenv_text_parses_or_names_a_line(text: str) -> None:
    outcome = _outcome(lambda: parse_dotenv(text))

    if isinstance(outcome, ConfigError):
        assert outcome.key.startswith(".env:")
    else:
        assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) for key in outcome)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=80))
def test_any_config_file_text_gives_a_config_or_a_config_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("mmbc.toml", "options.json", ".env"):
            write(Path(tmp) / name, text)
        for arg, name in (("config_file", "mmbc.toml"), ("options_file", "options.json"),
                          ("dotenv_file", ".env")):  # fmt: skip
            path = Path(tmp) / name
            outcome = _outcome(lambda: load(environ=MINIMAL_ENV, **{arg: path}))  # noqa: B023
            assert isinstance(outcome, EngineSettings) or outcome.key


@settings(max_examples=100, deadline=None)
@given(port=st.integers(1, 65535), unit_id=st.integers(0, 247), n=st.integers(1, 999))
def test_valid_battery_values_are_kept_exactly(port: int, unit_id: int, n: int) -> None:
    config = build_config(
        environ={
            "P1_HOST": "192.168.1.50",
            f"BATTERY_{n}_IP": "192.168.1.101",
            f"BATTERY_{n}_PORT": f" {port} ",
            f"BATTERY_{n}_ADDRESS": str(unit_id),
        }
    )

    assert config.batteries == (
        BatterySettings(number=n, host="192.168.1.101", port=port, unit_id=unit_id),
    )


# --- logging --------------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    for name, old in quiet.items():
        logging.getLogger(name).setLevel(old)


@pytest.mark.usefixtures("restore_logging")
def test_json_logging_writes_one_object_per_line() -> None:
    stream = io.StringIO()
    setup_logging("info", "json", stream=stream)

    logging.getLogger("engine.test").info("battery %s -> %s", "battery_1", "charging")
    logging.getLogger("engine.test").debug("not shown")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("engine.test").exception("failed")

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(x["level"], x["logger"], x["msg"]) for x in lines] == [
        ("INFO", "engine.test", "battery battery_1 -> charging"),
        ("ERROR", "engine.test", "failed"),
    ]
    assert "ValueError: boom" in lines[1]["exc"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", lines[0]["ts"])


@pytest.mark.usefixtures("restore_logging")
def test_text_logging_and_quiet_libraries() -> None:
    stream = io.StringIO()
    setup_logging("DEBUG", "text", stream=stream)
    setup_logging("DEBUG", "text", stream=stream)  # again: replaces, does not duplicate

    logging.getLogger("engine.test").debug("hello %d", 42)
    logging.getLogger("pymodbus.client").info("packet noise")
    logging.getLogger("aiomqtt").warning("broker gone")

    out = stream.getvalue()
    assert out.count("hello 42") == 1
    assert "engine.test" in out
    assert "packet noise" not in out
    assert "broker gone" in out
    assert all(logging.getLogger(n).level == logging.WARNING for n in QUIET_LOGGERS)


@pytest.mark.parametrize(("level", "fmt"), [("LOUD", "text"), ("INFO", "xml")])
def test_setup_logging_rejects_unknown_level_or_format(level: str, fmt: str) -> None:
    with pytest.raises(ValueError, match="log"):
        setup_logging(level, fmt)


# --- the HTTP server -----------------------------------------------------------------------


def test_http_server_is_on_by_default_on_every_interface() -> None:
    http = env_config().http
    assert http.serves
    assert (http.host, http.port, http.token) == ("", 8099, None)
    assert "http: *:8099, read-only (no token)" in env_config().describe()


@pytest.mark.parametrize("off", [{"HTTP_PORT": "0"}, {"HTTP_ENABLED": "false"}])
def test_http_server_can_be_turned_off(off: dict[str, str]) -> None:
    config = env_config(**off, HTTP_HOST="127.0.0.1")
    assert not config.http.serves
    assert "http: disabled" in config.describe()


def test_http_settings_from_the_environment_and_toml() -> None:
    config = build_config(
        environ={**MINIMAL_ENV, "HTTP_PORT": "18099"},
        toml={"http": {"host": "127.0.0.1", "token": "toml-secret-1"}},
    )
    assert (config.http.host, config.http.port) == ("127.0.0.1", 18099)
    assert config.http.token is not None
    assert config.http.token.get_secret_value() == "toml-secret-1"


def test_http_token_never_appears_in_repr_or_describe() -> None:
    config = env_config(HTTP_TOKEN="s3cret-token-value")
    assert config.http.token is not None
    assert config.http.token.get_secret_value() == "s3cret-token-value"
    assert "s3cret" not in repr(config)
    assert "s3cret" not in config.describe()
    assert "controls on (token set)" in config.describe()


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"HTTP_PORT": "70000"}, "HTTP_PORT"),
        ({"HTTP_PORT": "web"}, "HTTP_PORT"),
        ({"HTTP_ENABLED": "maybe"}, "HTTP_ENABLED"),
        ({"HTTP_HOST": "http://x"}, "HTTP_HOST"),
    ],
)
def test_bad_http_settings_name_their_key(env: dict[str, str], key: str) -> None:
    err = config_error(environ={**MINIMAL_ENV, **env})
    assert err.key == key


def test_a_short_token_is_refused_without_showing_it() -> None:
    err = config_error(environ={**MINIMAL_ENV, "HTTP_TOKEN": "abc1234"})
    assert err.key == "HTTP_TOKEN"
    assert "at least 8 characters" in err.problem
    assert "abc1234" not in str(err)
