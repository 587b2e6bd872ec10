"""OpenTelemetry spans for executions, through ``opentelemetry-api`` only.

Without a configured OpenTelemetry SDK the API hands out a no-op tracer, so this costs nearly
nothing. With one (``opentelemetry-sdk`` plus an exporter set up by the host program), every
execution becomes a span named ``e2b.execute`` with the attributes below.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

try:  # the API is a declared dependency, but a broken install must not break execution
    from opentelemetry import trace as _trace
except ImportError:  # pragma: no cover
    _trace = None  # type: ignore[assignment]

__all__ = ["ExecutionSpan", "execution_span"]

TRACER_NAME = "e2b_kernel"


@dataclass
class ExecutionSpan:
    """What the caller reports about one execution; written to the span when it ends."""

    sandbox_id: str | None = None
    success: bool = True
    error_name: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    def fail(self, error_name: str) -> None:
        """Mark the execution as failed with the given error name."""
        self.success = False
        self.error_name = error_name


@contextmanager
def execution_span(front_end: str, sandbox_id: str | None = None) -> Iterator[ExecutionSpan]:
    """Time one execution and record it as an ``e2b.execute`` span.

    An exception escaping the block marks the span failed with the exception's type name.
    """
    record = ExecutionSpan(sandbox_id=sandbox_id)
    start = time.perf_counter()
    if _trace is None:  # pragma: no cover
        yield record
        return
    # Not made the current span: the session's execute() is an async generator, and a
    # context attached in one step of it could be detached in another task's context.
    span = _trace.get_tracer(TRACER_NAME).start_span("e2b.execute")
    try:
        yield record
    except BaseException as exc:
        record.fail(type(exc).__name__)
        raise
    finally:
        if span.is_recording():
            span.set_attribute("e2b.front_end", front_end)
            if record.sandbox_id:
                span.set_attribute("e2b.sandbox_id", record.sandbox_id)
            span.set_attribute("e2b.duration_s", time.perf_counter() - start)
            span.set_attribute("e2b.success", record.success)
            if record.error_name:
                span.set_attribute("e2b.error_name", record.error_name)
            for key, value in record.attributes.items():
                span.set_attribute(key, value)
            if not record.success:
                span.set_status(_trace.Status(_trace.StatusCode.ERROR, record.error_name))
        span.end()
