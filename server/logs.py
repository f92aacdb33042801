"""Log set-up, and the policy every module follows.

Policy:

- Events are ``noun.verb`` names with fields, never sentences:
  ``log.info("client.connected", key=redact_key(key), peer=ip)``.
- ERROR: a bug, a crashed handler, or an operator mistake that breaks the
  service (a provider rejecting the relay's own API key).
- WARNING: degraded but running (a keys file that cannot be read, a slow
  consumer closed, a long garbage-collection pause).
- INFO: lifecycle: start, stop, one line when a client connects, one when
  it disconnects (with duration and close code), one line per refused
  client, one line per webhook (source, items, result).
- DEBUG: per-frame and per-lookup detail.
- A license key appears only as ``redact_key(key)``; a secret never, only
  its name. Sanic's access log stays off: it would print ``?key=``.

Output is JSON lines when stderr is not a terminal, coloured console lines
when it is (``RELAY_LOG_FORMAT`` overrides).
"""

from __future__ import annotations

import logging
import sys

import structlog

from server.config import LogFormat


def configure_logging(level: str, log_format: LogFormat) -> None:
    """Send structlog and the standard library's loggers to stderr."""
    use_json = log_format is LogFormat.JSON or (
        log_format is LogFormat.AUTO and not sys.stderr.isatty()
    )
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer()
    )
    numeric_level = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Sanic's own loggers: keep warnings and errors, drop the access log.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(message)s")
    logging.getLogger("sanic.access").disabled = True
