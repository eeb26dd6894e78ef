"""structlog set-up, called once by each entry point (never at import)."""
from __future__ import annotations

import logging
import os
import sys

import structlog


def setup_logging(service: str, level: str | None = None, json: bool | None = None) -> structlog.BoundLogger:
    level_name = (level or os.environ.get("CAPILLARY_LOG_LEVEL", "info")).upper()
    as_json = json if json is not None else os.environ.get("CAPILLARY_LOG_FORMAT", "json") == "json"
    renderer = structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level_name, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    return structlog.get_logger()
