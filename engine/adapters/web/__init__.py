"""The engine's HTTP server: ``/metrics`` for Prometheus, ``/healthz``, and a live dashboard."""

from __future__ import annotations

from engine.adapters.web.metrics import BatteryCounters, EngineCounters, EngineMetrics
from engine.adapters.web.server import DashboardServer

__all__ = ["BatteryCounters", "DashboardServer", "EngineCounters", "EngineMetrics"]
