"""Configuration safety: files are loaded up front, secrets never shown, risky values refused.

The hostile probe of issue 13 found an unloadable CA file crashing the engine later, a
password echoed back from a bad ``.env`` line, and values like ``1e-6`` s, ``1_0`` and
``port = 2.0`` accepted. Each case here runs through the real loader (and, where the exit
status matters, the real ``mmbc-engine`` process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.config import build_config, load_config
from engine.errors import ConfigError
from engine.settings import EngineSettings, MqttSettings
from tests.mqtt_broker import TlsFiles, make_tls_files

SECRET = "Hunter2Secret"
BASE: dict[str, str] = {
    "P1_API_URL": "http://127.0.0.1:9/api/v1/data",
    "BATTERY_1_IP": "127.0.0.1",
}
CONFIG_PREFIXES = ("P1_", "PV_", "BATTERY_", "MQTT_", "MMBC_")


def config_error(**environ: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        build_config(environ={**BASE, **environ})
    return info.value


def engine(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``mmbc-engine`` in an empty directory with only ``env`` as its configuration."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(CONFIG_PREFIXES)}
    workdir = tmp_path / "run"
    workdir.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=workdir,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    files = make_tls_files(tmp_path)
    if files is None:
        pytest.skip("needs the openssl command to make certificates")
    return files


# --- files are loaded when the configuration is -----------------------------------------------


@pytest.mark.parametrize("args", [(), ("--check",)])
def test_an_unloadable_ca_file_exits_2_naming_it(tmp_path: Path, args: tuple[str, ...]) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n", encoding="utf-8")

    result = engine(tmp_path, {**BASE, "MQTT_HOST": "127.0.0.1", "MQTT_CA_FILE": str(ca)}, *args)

    assert result.returncode == 2, result.stdout + result.stderr
    assert "MQTT_CA_FILE: cannot load a CA certificate" in result.stderr
    assert "Traceback" not in result.stderr
    assert "configuration is valid" not in result.stdout


def test_a_missing_or_unreadable_ca_file_names_the_key(tmp_path: Path) -> None:
    missing = config_error(MQTT_HOST="b", MQTT_CA_FILE=str(tmp_path / "nope.pem"))
    directory = config_error(MQTT_HOST="b", MQTT_CA_FILE=str(tmp_path))

    assert (missing.key, missing.problem) == (
        "MQTT_CA_FILE",
        f"file not found: {tmp_path}/nope.pem",
    )
    assert directory.key == "MQTT_CA_FILE"


def test_a_good_ca_and_client_certificate_load(tls: TlsFiles) -> None:
    config = build_config(
        environ={
            **BASE,
            "MQTT_HOST": "127.0.0.1",
            "MQTT_CA_FILE": tls.certfile,
            "MQTT_CERT_FILE": tls.certfile,
            "MQTT_KEY_FILE": tls.keyfile,
        }
    )

    assert config.mqtt is not None
    assert config.mqtt.tls
    assert config.mqtt.ssl_context() is not None
    assert "client certificate" in config.describe()


def test_a_client_certificate_without_its_key_names_the_certificate(tls: TlsFiles) -> None:
    err = config_error(MQTT_HOST="b", MQTT_CERT_FILE=tls.certfile)  # the file holds no key

    assert err.key == "MQTT_CERT_FILE"
    assert "cannot load the client certificate" in err.problem


def test_a_key_that_does_not_match_names_the_key(tmp_path: Path, tls: TlsFiles) -> None:
    (tmp_path / "other").mkdir()
    other = make_tls_files(tmp_path / "other")
    assert other is not None

    err = config_error(MQTT_HOST="b", MQTT_CERT_FILE=tls.certfile, MQTT_KEY_FILE=other.keyfile)
    lone_key = config_error(MQTT_HOST="b", MQTT_KEY_FILE=tls.keyfile)

    assert err.key == "MQTT_KEY_FILE"
    assert "cannot load the client certificate" in err.problem
    assert (lone_key.key, lone_key.problem) == (
        "MQTT_KEY_FILE",
        "a client key needs its certificate",
    )


def test_the_toml_file_names_its_own_keys(tmp_path: Path) -> None:
    config = tmp_path / "mmbc.toml"
    config.write_text(f'[mqtt]\nhost = "b"\ntls_ca_file = "{tmp_path}/nope.pem"\n', "utf-8")

    with pytest.raises(ConfigError) as info:
        load_config(environ=BASE, config_file=config, discover_files=False)

    assert info.value.key == "mqtt.tls_ca_file"
    assert "file not found" in info.value.problem


# --- secrets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        f"MQTT_PASSWORD: {SECRET}",
        f"MQTT_PASSWORD {SECRET}",
        f'MQTT_PASSWORD="{SECRET}',
        f"MQTT_PASSWORD='{SECRET}' trailing",
        SECRET,
    ],
)
def test_a_bad_dotenv_line_never_shows_its_value(tmp_path: Path, line: str) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"P1_HOST=127.0.0.1\n{line}\nBATTERY_1_IP=127.0.0.1\n", encoding="utf-8")

    with pytest.raises(ConfigError) as info:
        load_config(environ={}, dotenv_file=dotenv, discover_files=False)

    assert info.value.key.startswith(f"{dotenv}:2")
    assert SECRET not in str(info.value)


def test_the_engine_does_not_print_a_secret_from_a_bad_dotenv_line(tmp_path: Path) -> None:
    dotenv = tmp_path / "secret.env"
    dotenv.write_text(f"MQTT_USERNAME=mmbc\nMQTT_PASSWORD: {SECRET}\n", encoding="utf-8")

    result = engine(tmp_path, BASE, "--env-file", str(dotenv))

    assert result.returncode == 2
    assert f"{dotenv}:2: expected KEY=VALUE (the line starts with MQTT_PASSWORD" in result.stderr
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "document",
    [
        {"mqtt": {"host": "b", "username": "u", "password": [SECRET]}},
        {"mqtt": {"host": "b", "username": "u", "password": {"x": SECRET}}},
        {"mqtt": {"host": "b", "password": SECRET}},  # no user name
        {"mqtt": {"host": "b", "username": "u", "password": f"{SECRET}\x00"}},
    ],
)
def test_errors_about_the_password_never_show_it(document: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(environ=BASE, toml=document)

    assert info.value.key == "mqtt.password"
    assert SECRET not in str(info.value)


def test_the_password_is_in_no_summary_repr_or_validation_error() -> None:
    config = build_config(
        environ={**BASE, "MQTT_HOST": "b", "MQTT_USERNAME": "u", "MQTT_PASSWORD": SECRET}
    )
    with pytest.raises(ValidationError) as info:
        MqttSettings(host="b", password=SECRET)  # no user name

    assert config.mqtt is not None
    assert config.mqtt.password_text() == SECRET
    assert SECRET not in repr(config) + str(config) + config.describe()
    assert SECRET not in str(info.value)


def test_a_number_is_a_valid_password_from_a_file() -> None:
    config = build_config(
        environ=BASE, options={"mqtt_host": "b", "mqtt_username": "u", "mqtt_password": 1234}
    )

    assert config.mqtt is not None
    assert config.mqtt.password_text() == "1234"


# --- risky values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "key", "problem"),
    [
        ({"MMBC_LOOP_PERIOD_S": "1e-6"}, "MMBC_LOOP_PERIOD_S", "between 0.1 and 60, got 1e-06"),
        ({"MMBC_LOOP_PERIOD_S": "3600"}, "MMBC_LOOP_PERIOD_S", "between 0.1 and 60"),
        ({"MMBC_STALE_AFTER_S": "86400"}, "MMBC_STALE_AFTER_S", "at most 120, got 86400"),
        ({"MMBC_STALE_AFTER_S": "0"}, "MMBC_STALE_AFTER_S", "greater than 0"),
        ({"MMBC_DEADBAND_W": "1_0"}, "MMBC_DEADBAND_W", "expected an integer, got '1_0'"),
        ({"BATTERY_1_PORT": "5_02"}, "BATTERY_1_PORT", "expected an integer, got '5_02'"),
        ({"MMBC_LOOP_PERIOD_S": "1_0"}, "MMBC_LOOP_PERIOD_S", "expected a number, got '1_0'"),
        ({"MMBC_NOISE_ALPHA": "0x1"}, "MMBC_NOISE_ALPHA", "expected a number"),
        ({"MMBC_DEADBAND_W": "٢٠"}, "MMBC_DEADBAND_W", "expected an integer"),  # Arabic digits
        ({"MMBC_METER_LATENCY_S": "61"}, "MMBC_METER_LATENCY_S", "between 0 and 60"),
    ],
)
def test_values_that_make_no_physical_sense_are_refused(
    environ: dict[str, str], key: str, problem: str
) -> None:
    err = config_error(**environ)

    assert err.key == key
    assert problem in err.problem


def test_a_stale_limit_that_weakens_the_safety_is_accepted_with_a_warning() -> None:
    config = build_config(environ={**BASE, "MMBC_STALE_AFTER_S": "60"})
    normal = build_config(environ={**BASE, "MMBC_STALE_AFTER_S": "30"})

    assert config.control.stale_after_s == 60.0
    assert [w for w in config.warnings if w.startswith("MMBC_STALE_AFTER_S: 60 is above 30")]
    assert "stale-meter safety" in config.describe()
    assert normal.warnings == ()


def test_the_engine_logs_the_warning_at_start(tmp_path: Path) -> None:
    result = engine(tmp_path, {**BASE, "MMBC_STALE_AFTER_S": "90"}, "--check")

    assert result.returncode == 1  # nothing answers on those ports; the config itself is fine
    assert "configuration: MMBC_STALE_AFTER_S: 90 is above 30" in result.stderr


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[[battery]]\nhost = '127.0.0.1'\nport = 2.0\n", "battery[0].port"),
        ("[mqtt]\nhost = 'b'\nport = 1883.0\n", "mqtt.port"),
        ("[control]\ndeadband_w = 20.0\n", "control.deadband_w"),
        ("[control]\nnot_following_cycles = 5.0\n", "control.not_following_cycles"),
    ],
)
def test_toml_integers_must_be_integers(tmp_path: Path, toml: str, key: str) -> None:
    path = tmp_path / "mmbc.toml"
    path.write_text(toml, encoding="utf-8")

    with pytest.raises(ConfigError) as info:
        load_config(environ={"P1_HOST": "127.0.0.1", "BATTERY_1_IP": "127.0.0.2"},
                    config_file=path, discover_files=False)  # fmt: skip

    assert info.value.key == key
    assert info.value.problem.startswith("expected an integer, got ")


def test_json_integers_must_be_integers_and_booleans_are_not_numbers() -> None:
    with pytest.raises(ConfigError) as decimal:
        build_config(options={"p1_host": "127.0.0.1", "battery_1_ip": "h", "battery_1_port": 502.0})
    with pytest.raises(ConfigError) as boolean:
        build_config(options={"p1_host": "127.0.0.1", "battery_1_ip": "h", "loop_period_s": True})

    assert (decimal.value.key, decimal.value.problem) == (
        "battery_1_port",
        "expected an integer, got 502.0",
    )
    assert (boolean.value.key, boolean.value.problem) == (
        "loop_period_s",
        "expected a number, got true",
    )


def test_a_float_setting_takes_an_integer() -> None:
    config = build_config(toml={"control": {"loop_period_s": 2}}, environ=BASE)

    assert config.control.loop_period_s == 2.0
    assert type(config.control.loop_period_s) is float


# --- duplicate batteries -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("127.0.0.1", "localhost"),
        ("localhost", "::1"),
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("Battery.LAN", "battery.lan."),
    ],
)
def test_the_same_device_under_two_names_is_refused(first: str, second: str) -> None:
    err = config_error(BATTERY_1_IP=first, BATTERY_2_IP=second)

    assert err.key == "BATTERY_2_IP"
    assert err.problem.startswith("battery_2 is the same device as battery_1")


def test_names_from_the_hosts_file_are_compared_by_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("# comment\n192.168.1.101  garage-battery garage  # inline\n", "utf-8")
    monkeypatch.setattr("engine.config.HOSTS_FILE", hosts)

    err = config_error(BATTERY_1_IP="192.168.1.101", BATTERY_3_IP="Garage")

    assert err.key == "BATTERY_3_IP"
    assert "battery_3 is the same device as battery_1 (Garage:502 unit 1, as 192.168.1.101)" in (
        err.problem
    )


@pytest.mark.parametrize(
    "extra",
    [
        {"BATTERY_2_IP": "localhost", "BATTERY_2_PORT": "503"},  # another Modbus server
        {"BATTERY_2_IP": "localhost", "BATTERY_2_ADDRESS": "2"},  # another unit behind a gateway
        {"BATTERY_2_IP": "127.0.0.2"},  # another loopback address
        {"BATTERY_2_IP": "unresolvable-name.invalid"},  # compared by its text only
    ],
)
def test_different_devices_are_accepted(extra: dict[str, str]) -> None:
    config = build_config(environ={**BASE, **extra})

    assert [b.name for b in config.batteries] == ["battery_1", "battery_2"]


# --- batteries keep their number ---------------------------------------------------------------


def test_battery_2_alone_is_battery_2_everywhere() -> None:
    config = build_config(
        environ={"P1_HOST": "127.0.0.1", "BATTERY_2_IP": "192.168.1.102", "BATTERY_2_PORT": "5020"}
    )

    (battery,) = config.batteries
    assert (battery.number, battery.name, battery.port) == (2, "battery_2", 5020)
    assert [spec.name for spec in config.control_settings().batteries] == ["battery_2"]
    assert "battery_2: 192.168.1.102:5020" in config.describe()


def test_battery_numbers_from_a_toml_list_and_the_environment_line_up() -> None:
    config = build_config(
        environ={**BASE, "BATTERY_3_IP": "192.168.1.103"},
        toml={"battery": [{"host": "192.168.1.101"}, {"host": "192.168.1.102"}]},
    )

    assert [(b.number, b.host) for b in config.batteries] == [
        (1, "127.0.0.1"),  # the environment's BATTERY_1_IP wins over the first [[battery]]
        (2, "192.168.1.102"),
        (3, "192.168.1.103"),
    ]


def test_distinct_numbers_are_required_when_built_directly() -> None:
    battery = {"number": 1, "host": "h"}
    with pytest.raises(ValidationError):
        EngineSettings(meter={"url": BASE["P1_API_URL"]}, batteries=[battery, battery])


# --- the removed setting -----------------------------------------------------------------------


def test_offline_after_failures_is_gone_with_a_warning_for_old_files() -> None:
    config = build_config(environ={**BASE, "MMBC_OFFLINE_AFTER_FAILURES": "3"})
    from_options = build_config(environ=BASE, options={"offline_after_failures": 3})

    assert config.warnings == ("MMBC_OFFLINE_AFTER_FAILURES: ignored; it never had an effect",)
    assert from_options.warnings == ("offline_after_failures: ignored; it never had an effect",)
    assert not hasattr(config.control, "offline_after_failures")
    docs = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text("utf-8")
    assert "OFFLINE_AFTER_FAILURES" not in docs


def test_options_json_round_trip_of_every_documented_key_is_not_an_error() -> None:
    """Every options.json name the loader offers is accepted (with a value of its type)."""
    from engine.config import NAMES, section_fields

    options: dict[str, object] = {"p1_api_url": BASE["P1_API_URL"], "battery_1_ip": "h"}
    for name in NAMES:
        if name.section in ("battery", "meter", "pv_meter", "mqtt"):
            continue
        default = section_fields(name.section)[name.field].get_default(call_default_factory=True)
        options[name.option] = json.loads(json.dumps(default))

    config = build_config(options=options)

    assert config.control.deadband_w == 20
