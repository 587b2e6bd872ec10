"""Shared fixtures: a local E2B-compatible service for the whole session, and SDK settings."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from e2b_kernel.local import RunningService, start_subprocess


@pytest.fixture(scope="session", autouse=True)
def completion_seed_built() -> None:
    """Sandboxes start with a warm completion cache, as on any machine where a service has
    run once: built here in the foreground (seconds, once per machine and runtime) rather than
    by the first service at a low priority beside the first tests."""
    subprocess.run(
        [sys.executable, "-c", "from e2b_kernel.local.sandbox.completion_seed import main; main()"],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=300,
    )


@pytest.fixture(scope="session")
def local_service() -> Iterator[RunningService]:
    """The local service in a child process (isolated sandboxes); stopped at session end."""
    service = start_subprocess()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def sdk_env(local_service: RunningService, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point the unmodified E2B SDK at the local service for one test."""
    env = local_service.sdk_env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    monkeypatch.delenv("E2B_DOMAIN", raising=False)
    return env


@pytest.fixture
def running_sandbox_ids(sdk_env: dict[str, str]) -> Callable[[], set[str]]:
    """A function returning the ids of the sandboxes running on the local service now,
    as the unmodified SDK's ``AsyncSandbox.list()`` reports them."""
    import asyncio

    from e2b_code_interpreter import AsyncSandbox

    async def fetch() -> set[str]:
        paginator = AsyncSandbox.list(
            api_key=sdk_env["E2B_API_KEY"], api_url=sdk_env["E2B_API_URL"]
        )
        ids: set[str] = set()
        while paginator.has_next:
            ids.update(info.sandbox_id for info in await paginator.next_items())
        return ids

    return lambda: asyncio.run(fetch())


@pytest.fixture
def tagged_sandboxes(
    local_service: RunningService,
) -> Callable[..., dict[str, dict[str, str]]]:
    """A function returning the sandboxes running on a local service now (``service``, by
    default the shared one) whose metadata holds ``probe`` under the key ``probe`` (a test's
    own), as id -> metadata."""
    import asyncio

    from e2b_code_interpreter import AsyncSandbox

    async def fetch(probe: str, service: RunningService) -> dict[str, dict[str, str]]:
        paginator = AsyncSandbox.list(api_key=service.api_key, api_url=service.url)
        found: dict[str, dict[str, str]] = {}
        while paginator.has_next:
            for info in await paginator.next_items():
                if info.metadata.get("probe") == probe:
                    found[info.sandbox_id] = dict(info.metadata)
        return found

    return lambda probe, service=local_service: asyncio.run(fetch(probe, service))


@pytest.fixture
def spans() -> Iterator[Any]:
    """An in-memory exporter receiving the spans the real OpenTelemetry SDK records in a test."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        trace.set_tracer_provider(TracerProvider())  # once per process; later calls are no-ops
        provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()  # a stopped exporter drops later spans
