"""OpenTelemetry spans for executions and the kernel's own HTTP requests, through
``opentelemetry-api`` only.

Without a configured OpenTelemetry SDK the API hands out a no-op tracer, so this costs nearly
nothing. With one (``opentelemetry-sdk`` plus an exporter set up by the host program), every
execution becomes a span named ``e2b.execute`` with the attributes below, and each request of
``core/rest.py`` a client span whose trace context travels in its headers, as the E2B SDK's
HTTP client does for its own requests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

try:  # the API is a declared dependency, but a broken install must not break execution
    from opentelemetry import trace as _trace
except ImportError:  # pragma: no cover
    _trace = None  # type: ignore[assignment]

__all__ = ["ExecutionSpan", "execution_span", "http_client_span"]

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


@contextmanager
def http_client_span(
    method: str, url: str, headers: dict[str, str]
) -> Iterator[Callable[[int], None]]:
    """A client span around one HTTP request (OpenTelemetry's HTTP semantic conventions);
    adds the trace context (``traceparent``) to ``headers`` when a span is recorded. Yields
    the function to call with the reply's status."""
    if _trace is None:  # pragma: no cover
        yield lambda status: None
        return
    from opentelemetry import propagate

    where = urlsplit(url)
    attributes: dict[str, str | int] = {
        "http.request.method": method,
        "server.address": where.hostname or "",
        "server.port": where.port or (443 if where.scheme == "https" else 80),
        "network.protocol.name": "http",
        "network.protocol.version": "1.1",
        "url.full": url,
    }
    tracer = _trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(
        method, kind=_trace.SpanKind.CLIENT, attributes=attributes
    ) as span:

        def replied(status: int) -> None:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(_trace.StatusCode.ERROR)

        propagate.inject(headers)
        yield replied
