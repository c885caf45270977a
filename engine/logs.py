"""Logging setup: readable text for humans, JSON lines for containers and log shippers."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Final, TextIO

LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS: Final = ("text", "json")

# Libraries that narrate every packet or transition at INFO/DEBUG; our own availability logging
# says what matters, so they only get through from WARNING up.
QUIET_LOGGERS: Final = ("pymodbus", "aiomqtt", "transitions", "amqtt")

_TEXT_FORMAT: Final = "%(asctime)s %(levelname)-8s %(name)s: %(message)s"
_HANDLER_MARK: Final = "_mmbc_handler"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``msg``."""

    def format(self, record: logging.LogRecord) -> str:
        # record.created is the logging module's own wall-clock stamp: a log line's time of day,
        # never used for control timing.
        payload: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        return json.dumps(payload, ensure_ascii=False, default=str)


def setup_logging(
    level: str = "INFO", fmt: str = "text", *, stream: TextIO | None = None
) -> logging.Handler:
    """Configure the root logger once; calling it again replaces the previous MMBC handler.

    ``level`` is one of ``LOG_LEVELS`` (any case), ``fmt`` one of ``LOG_FORMATS``. Output goes to
    ``stream`` (default stderr, which Docker and systemd collect). Returns the installed handler.
    """
    level_name = level.strip().upper()
    if level_name not in LOG_LEVELS:
        msg = f"log level must be one of {', '.join(LOG_LEVELS)}, got {level!r}"
        raise ValueError(msg)
    fmt_name = fmt.strip().lower()
    if fmt_name not in LOG_FORMATS:
        msg = f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}"
        raise ValueError(msg)

    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if fmt_name == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT))
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    numeric_level = logging.getLevelNamesMapping()[level_name]
    root.setLevel(numeric_level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, numeric_level))
    # transitions warns once per machine about every convenience method it does not bind
    # (model_override=True is deliberate: the models declare exactly their triggers).
    logging.getLogger("transitions.core").setLevel(max(logging.ERROR, numeric_level))
    return handler
