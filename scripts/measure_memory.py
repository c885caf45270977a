"""Resident memory and cycle latency of ``mmbc-engine`` against ``mmbc-sim serve``.

Starts ``mmbc-sim serve`` on free loopback ports, points a real ``mmbc-engine`` at it through
the environment (as a user's ``.env`` would), samples the engine's ``VmRSS`` from
``/proc/<pid>/status`` every ``--interval`` seconds for ``--duration`` seconds of wall time,
then stops both (SIGTERM) and prints the peak, the final value and the growth trend (a
least-squares slope over the second half of the samples, so start-up does not count), and the
cycle latency (meter answer to last battery write) the engine logs when it stops.

Without ``--dashboard`` the engine's HTTP server is off (the baseline; target <= 80 MB). With
it the server listens on loopback and the script keeps a dashboard open the way the page does:
the live event stream read continuously, ``/api/long`` every 60 s, plus a Prometheus-style
scrape of ``/metrics`` every 15 s (target <= 60 MB).

    .venv/bin/python scripts/measure_memory.py --duration 3600               # baseline hour
    .venv/bin/python scripts/measure_memory.py --duration 3600 --dashboard   # the issue's hour
    .venv/bin/python scripts/measure_memory.py --duration 300 --interval 5

Linux only (reads /proc). The engine runs in real time whatever ``--speed`` is; a faster
plant only makes the simulated house change faster.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCENARIO = ROOT / "scenarios" / "default.toml"
BIN = Path(sys.executable).parent
TARGET_MB = 80.0
DASHBOARD_TARGET_MB = 60.0
SCRAPE_EVERY_S = 15.0
SNAPSHOT_EVERY_S = 60.0
_ENV_LINE = re.compile(r"^(P1_API_URL|PV_API_URL|BATTERY_\d+_(?:IP|PORT|ADDRESS))=(\S+)$")
_CONFIG_PREFIXES = ("P1_", "PV_", "BATTERY_", "MQTT_", "MMBC_", "HTTP_")


def _command(name: str, module: str) -> list[str]:
    script = BIN / name
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_port_run(count: int) -> int:
    """The first of ``count`` consecutive free ports on 127.0.0.1."""
    for _ in range(100):
        base = _free_port()
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
        return base
    raise RuntimeError("no run of free ports")


def rss_mb(pid: int) -> float | None:
    """``VmRSS`` of ``pid`` in MB (10^6 bytes), None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 / 1e6 if match else None


def slope_mb_per_h(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) in MB per hour; 0 with fewer than two samples."""
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_m = sum(m for _, m in samples) / n
    var_t = sum((t - mean_t) ** 2 for t, _ in samples)
    if var_t == 0:
        return 0.0
    cov = sum((t - mean_t) * (m - mean_m) for t, m in samples)
    return cov / var_t * 3600.0


def _drain(stream: object, sink: list[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        sink.append(line)


def _serve(
    scenario: Path, speed: float, workdir: Path
) -> tuple[subprocess.Popen[str], dict[str, str]]:
    p1_port = _free_port()
    modbus_port = _free_port_run(8)
    proc = subprocess.Popen(  # noqa: S603 - our own console scripts, our own arguments
        [
            *_command("mmbc-sim", "sim"),
            "serve",
            str(scenario),
            "--p1-port",
            str(p1_port),
            "--modbus-port",
            str(modbus_port),
            "--speed",
            str(speed),
            "--json",
            str(workdir / "served.json"),
        ],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    env: dict[str, str] = {}
    for line in proc.stdout:
        match = _ENV_LINE.match(line.strip())
        if match:
            env[match.group(1)] = match.group(2)
        if line.startswith("(SIGINT/SIGTERM"):
            break
    else:
        raise RuntimeError("mmbc-sim serve ended before printing its endpoints")
    threading.Thread(target=_drain, args=(proc.stdout, []), daemon=True).start()
    return proc, env


def _wait_for(log: list[str], text: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30.0
    while not any(text in line for line in log):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"engine never logged {text!r}:\n" + "".join(log[-20:]))
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[str], name: str) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        print(f"{name} did not stop within 15 s; killed")
        proc.kill()
        return proc.wait()


def _read_stream(url: str, stop: threading.Event, counts: dict[str, int]) -> None:
    """The dashboard's live stream, read as a browser does; reconnects if it drops."""
    while not stop.is_set():
        try:
            with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - loopback
                for line in response:
                    if line.startswith(b"event: "):
                        counts["events"] += 1
                    if stop.is_set():
                        return
        except OSError:
            counts["stream_errors"] += 1
            stop.wait(2.0)


def _poll(url: str, every_s: float, stop: threading.Event, counts: dict[str, int]) -> None:
    while not stop.wait(every_s):
        try:
            with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
                response.read()
                counts[url.rsplit("/", 1)[-1]] += 1
        except OSError:
            counts["poll_errors"] += 1


def _open_dashboard(port: int, stop: threading.Event) -> dict[str, int]:
    base = f"http://127.0.0.1:{port}"
    counts = {"events": 0, "metrics": 0, "long": 0, "stream_errors": 0, "poll_errors": 0}
    for target, args in (
        (_read_stream, (f"{base}/api/stream", stop, counts)),
        (_poll, (f"{base}/metrics", SCRAPE_EVERY_S, stop, counts)),
        (_poll, (f"{base}/api/long", SNAPSHOT_EVERY_S, stop, counts)),
    ):
        threading.Thread(target=target, args=args, daemon=True).start()
    for asset in ("/", "/static/dashboard.js", "/static/vendor/uPlot.iife.min.js"):
        with urllib.request.urlopen(base + asset, timeout=10) as response:  # noqa: S310
            response.read()
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=3600.0, help="wall seconds (3600)")
    parser.add_argument("--interval", type=float, default=10.0, help="sample every N s (10)")
    parser.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO)
    parser.add_argument("--speed", type=float, default=1.0, help="plant speed for serve (1)")
    parser.add_argument(
        "--dashboard", action="store_true", help="HTTP server on, with a dashboard kept open"
    )
    args = parser.parse_args(argv)
    target_mb = DASHBOARD_TARGET_MB if args.dashboard else TARGET_MB

    with tempfile.TemporaryDirectory(prefix="mmbc-mem-") as tmp:
        workdir = Path(tmp)
        serve, served_env = _serve(args.scenario, args.speed, workdir)
        env = {k: v for k, v in os.environ.items() if not k.startswith(_CONFIG_PREFIXES)}
        env.update(served_env)
        http_port = _free_port()
        if args.dashboard:
            env.update({"HTTP_HOST": "127.0.0.1", "HTTP_PORT": str(http_port)})
        else:
            env["HTTP_ENABLED"] = "false"
        engine_log: list[str] = []
        engine = subprocess.Popen(  # noqa: S603 - our own console script
            _command("mmbc-engine", "engine"),
            cwd=workdir,  # no stray ./.env
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=_drain, args=(engine.stdout, engine_log), daemon=True).start()
        print(
            f"engine pid {engine.pid} against {args.scenario.name} (serve speed {args.speed:g}),"
            f" HTTP server {'on, dashboard open' if args.dashboard else 'off'}"
        )
        print(f"{'t_s':>8} {'rss_mb':>8}")
        samples: list[tuple[float, float]] = []
        stop_clients = threading.Event()
        counts: dict[str, int] = {}
        start = time.monotonic()  # wall time of a measurement, not control
        try:
            if args.dashboard:
                _wait_for(engine_log, "HTTP server on", engine)
                counts = _open_dashboard(http_port, stop_clients)
            while True:
                elapsed = time.monotonic() - start
                rss = rss_mb(engine.pid)
                if rss is None or engine.poll() is not None:
                    print("engine exited early:\n" + "".join(engine_log[-20:]))
                    return 1
                samples.append((elapsed, rss))
                print(f"{elapsed:8.0f} {rss:8.1f}", flush=True)
                if elapsed >= args.duration:
                    break
                time.sleep(min(args.interval, max(0.0, args.duration - elapsed)))
        finally:
            stop_clients.set()
            engine_rc = _stop(engine, "mmbc-engine") if engine.poll() is None else engine.returncode
            serve_rc = _stop(serve, "mmbc-sim serve")
            time.sleep(0.5)  # let the log drain
            stopped = [line.strip() for line in engine_log if "mmbc-engine stopped" in line]
    peak = max(m for _, m in samples)
    final = samples[-1][1]
    trend = slope_mb_per_h(samples[len(samples) // 2 :])
    print(f"samples {len(samples)} over {samples[-1][0]:.0f} s")
    print(f"peak RSS  {peak:.1f} MB (target <= {target_mb:.0f} MB)")
    print(f"final RSS {final:.1f} MB")
    print(f"trend     {trend:+.2f} MB/h over the second half")
    if counts:
        print(
            f"dashboard: {counts['events']} stream events, {counts['metrics']} scrapes,"
            f" {counts['long']} history refreshes, {counts['stream_errors']} stream errors,"
            f" {counts['poll_errors']} poll errors"
        )
    print(stopped[-1] if stopped else "engine did not log its latency")
    print(f"exit status: mmbc-engine {engine_rc}, mmbc-sim serve {serve_rc}")
    return 0 if peak <= target_mb and engine_rc == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
