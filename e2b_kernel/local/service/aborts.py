"""Responses the service breaks off on purpose, kept out of the error log.

When a sandbox is killed while one of its responses streams (a command's output, an
``/execute``), the service ends the response mid-body, as E2B's proxy does: the client sees the
stream break and asks whether the sandbox still runs. The app returns without completing the
response and uvicorn closes the connection, logging "ASGI callable returned without completing
response." at ERROR level: true for a bug, and alarming in a service's log for a kill someone
asked for. The app marks its own abort in the request's context; a filter on uvicorn's logger
drops that one record for that request only.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

__all__ = ["install_log_filter", "mark_aborted_on_purpose"]

# Set in the request's own task (uvicorn runs each request in a task of its own, so the mark
# reaches no other request), read by the filter when uvicorn logs from that same task.
_ABORTED_ON_PURPOSE: ContextVar[bool] = ContextVar("aborted_on_purpose", default=False)
_UVICORN_RECORD = "ASGI callable returned without completing response"


def mark_aborted_on_purpose() -> None:
    """Say that the current request's response is being broken off on purpose."""
    _ABORTED_ON_PURPOSE.set(True)


class _PurposefulAborts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (_ABORTED_ON_PURPOSE.get() and record.getMessage().startswith(_UVICORN_RECORD))


def install_log_filter() -> None:
    """Keep uvicorn from logging the service's own aborts as errors (once per process)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _PurposefulAborts) for f in logger.filters):
        logger.addFilter(_PurposefulAborts())
