"""structlog set-up: JSON events into the run directory, readable lines on a terminal."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import structlog


def configure(json_path: str | Path | None, console: bool = False) -> structlog.BoundLogger:
    """Events go to `json_path` as JSON lines (appended); with console, also to stderr."""
    processors = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    sinks = []
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        sinks.append(open(json_path, "a", encoding="utf-8", buffering=1))  # noqa: SIM115
    renderer = structlog.processors.JSONRenderer()
    console_renderer = structlog.dev.ConsoleRenderer(colors=False)

    def fan_out(logger: object, method: str, event: dict) -> str:
        line = renderer(logger, method, dict(event))
        for sink in sinks:
            sink.write(line + "\n")
        if console and event.get("level") in ("warning", "error", "critical"):
            sys.stderr.write(console_renderer(logger, method, dict(event)) + "\n")
        raise structlog.DropEvent

    structlog.configure(
        processors=[*processors, fan_out],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        cache_logger_on_first_use=False,
    )
    return structlog.get_logger()
