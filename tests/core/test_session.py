"""SandboxSession used directly: telemetry, busy behaviour and secrets."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from e2b_kernel.config import SessionConfig
from e2b_kernel.core import SandboxSession
from e2b_kernel.core.telemetry import execution_span
from e2b_kernel.errors import SandboxLost
from e2b_kernel.local import RunningService

pytestmark = pytest.mark.timeout(180)


def test_execution_span_records_attributes(spans: InMemorySpanExporter) -> None:
    """Uses the shared ``spans`` fixture (tests/conftest.py): the real OpenTelemetry SDK."""
    with execution_span("kernel", "sbx-1") as record:
        record.fail("NameError")
    with pytest.raises(SandboxLost), execution_span("magic") as record:
        record.sandbox_id = "sbx-2"
        raise SandboxLost("gone")
    first, second = spans.get_finished_spans()
    assert first.name == "e2b.execute"
    assert first.attributes is not None and second.attributes is not None
    assert first.attributes["e2b.sandbox_id"] == "sbx-1"
    assert first.attributes["e2b.success"] is False
    assert first.attributes["e2b.error_name"] == "NameError"
    assert first.attributes["e2b.duration_s"] >= 0
    assert second.attributes["e2b.error_name"] == "SandboxLost"
    assert second.attributes["e2b.sandbox_id"] == "sbx-2"


def test_completion_while_busy_answers_at_once_and_secrets_stay_out(
    local_service: RunningService, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in local_service.sdk_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("VISIBLE_SETTING", "forwarded")
    config = SessionConfig(backend="cloud", forward_env=["VISIBLE_SETTING"])

    async def scenario() -> None:
        session = SandboxSession(config)
        try:
            await session.start()
            events = [
                e
                async for e in session.execute(
                    "import os\nprint(os.environ.get('E2B_API_KEY'), "
                    "os.environ.get('VISIBLE_SETTING'))"
                )
            ]
            assert events == [("stream", {"name": "stdout", "text": "None forwarded\n"})]
            running = session.execute("import time\nprint('go', flush=True)\ntime.sleep(3)")
            first = await running.__anext__()
            assert first[1]["text"] == "go\n"
            assert session.busy
            reply = await asyncio.wait_for(session.complete("pri", 3), 1)
            assert reply["matches"] == []
            assert (await asyncio.wait_for(session.inspect("print", 2), 1))["found"] is False
            assert [e async for e in running] == []
            assert (await session.complete("pri", 3))["matches"] == ["print"]
        finally:
            await session.close()

    asyncio.run(scenario())
