"""The engine's exception hierarchy. Translate third-party errors at the adapter boundary only."""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class ConfigError(EngineError):
    """Invalid configuration; ``key`` names the offending setting."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class DeviceError(EngineError):
    """A device could not be read or written."""

    def __init__(self, message: str, *, device: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.device = device
        self.retryable = retryable


class DeviceUnavailable(DeviceError):
    """Timeout, refused connection, DNS failure: transient."""


class DeviceResponseError(DeviceError):
    """The device answered, but the answer is unusable (bad JSON, Modbus exception, HTTP 5xx)."""


class CommandRejected(DeviceError):
    """The device refused a write."""
