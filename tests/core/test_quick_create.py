"""A sandbox created without the SDK (``core/quick_create.py``) is the SDK's own.

The kernel creates its sandbox with one plain request where every sandbox port is reached at
one URL, and builds the SDK's object later. These tests hold that to what the SDK does: the
same request on the wire, the same object afterwards, the SDK's error when refused, and no
SDK (nor httpx) import on the way to the first cell.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from loopback_server import LoopbackServer
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from e2b_kernel.config import SessionConfig
from e2b_kernel.core import SandboxSession, quick_create, sdk
from e2b_kernel.errors import SandboxUnavailable
from e2b_kernel.local import RunningService

pytestmark = pytest.mark.timeout(120)

# Set by the HTTP stack, not by the caller: the SDK's transport and urllib differ here only.
_TRANSPORT_HEADERS = {"host", "content-length", "connection", "accept-encoding"}
_REPLY = {
    "templateID": "code-interpreter-v1",
    "sandboxID": "recorded0sandbox",
    "clientID": "local",
    "envdVersion": "0.6.5",
    "envdAccessToken": "envd-token",
    "trafficAccessToken": "traffic-token",
    "domain": None,
}


class Recorder(LoopbackServer):
    """A loopback control plane that records each create request and answers 201."""

    def __init__(self) -> None:
        super().__init__([Route("/v2/sandboxes", self._create, methods=["POST"])])
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []

    async def _create(self, request: Request) -> JSONResponse:
        body = await request.body()
        self.requests.append((request.method, request.url.path, dict(request.headers), body))
        return JSONResponse(_REPLY, status_code=201)

    def __enter__(self) -> Recorder:
        super().__enter__()
        return self


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    for name in ("E2B_API_KEY", "E2B_API_URL", "E2B_SANDBOX_URL", "E2B_DEBUG", "E2B_DOMAIN"):
        monkeypatch.delenv(name, raising=False)
    with Recorder() as running:
        yield running


def _comparable(request: tuple[str, str, dict[str, str], bytes]) -> dict[str, Any]:
    method, path, headers, body = request
    kept = {k: v for k, v in headers.items() if k not in _TRANSPORT_HEADERS}
    if "traceparent" in kept:  # a span of each request's own: compare the form only
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", kept["traceparent"])
        kept["traceparent"] = "a W3C trace context"
    parsed = json.loads(body)
    return {"line": (method, path), "headers": kept, "body": parsed, "keys": list(parsed)}


@pytest.mark.parametrize(
    "settings",
    [
        {"metadata": {"owner": "nb"}, "envs": {"VISIBLE": "1"}, "lifecycle": None},
        {"metadata": {}, "envs": {}, "lifecycle": {"on_timeout": "pause", "auto_resume": True}},
    ],
    ids=["keepalive", "pause"],
)
def test_the_create_request_and_the_sandbox_object_are_the_sdks_own(
    recorder: Recorder, settings: dict[str, Any], spans: InMemorySpanExporter
) -> None:
    """With OpenTelemetry configured (``spans``), as the SDK's HTTP client does: each request
    is a client span and carries its trace context."""
    opts = {"api_key": "e2b_test_key", "api_url": recorder.url, "sandbox_url": recorder.url}

    async def both() -> tuple[Any, Any]:
        by_sdk = await sdk.async_sandbox().create(
            template="code-interpreter-v1",
            timeout=300,
            metadata=settings["metadata"] or None,
            envs=settings["envs"] or None,
            lifecycle=settings["lifecycle"],
            network={"allow_public_traffic": False},
            **opts,
        )
        target = quick_create.quick_target(opts)
        assert target is not None
        body = quick_create.create_body(
            template="code-interpreter-v1",
            timeout=300,
            metadata=settings["metadata"],
            envs=settings["envs"],
            lifecycle=settings["lifecycle"],
            allow_public_traffic=False,
        )
        created = await quick_create.create(target, body)
        assert created is not None
        return by_sdk, sdk.adopt(created, opts)

    by_sdk, adopted = asyncio.run(both())
    sdk_request, quick_request = (_comparable(r) for r in recorder.requests)
    differing = {
        name: (quick_request["headers"].get(name), sdk_request["headers"].get(name))
        for name in quick_request["headers"].keys() | sdk_request["headers"].keys()
        if quick_request["headers"].get(name) != sdk_request["headers"].get(name)
    }
    assert differing == {}, "headers (ours, the SDK's)"
    assert quick_request == sdk_request
    for attribute in (
        "sandbox_id",
        "sandbox_domain",
        "traffic_access_token",
        "_envd_access_token",
        "_envd_version",
        "envd_api_url",
    ):
        assert getattr(adopted, attribute) == getattr(by_sdk, attribute), attribute
    for attribute in ("api_url", "api_key", "headers", "sandbox_headers", "request_timeout"):
        ours = getattr(adopted.connection_config, attribute)
        assert ours == getattr(by_sdk.connection_config, attribute), attribute
    assert adopted.connection_config.sandbox_headers["X-Access-Token"] == "envd-token"
    by_scope = {
        span.instrumentation_scope.name: span
        for span in spans.get_finished_spans()
        if span.instrumentation_scope is not None
    }
    sdk_span, our_span = by_scope["pyqwest"], by_scope["e2b_kernel"]
    assert (our_span.name, our_span.kind) == (sdk_span.name, sdk_span.kind)
    assert sdk_span.kind == SpanKind.CLIENT
    assert dict(our_span.attributes or {}) == dict(sdk_span.attributes or {})


def test_without_one_explicit_sandbox_url_the_sdk_creates(monkeypatch: pytest.MonkeyPatch) -> None:
    """E2B cloud derives each sandbox's host from its domain: that stays the SDK's business."""
    for name in ("E2B_API_URL", "E2B_SANDBOX_URL", "E2B_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("E2B_API_KEY", "e2b_cloud_key")
    assert quick_create.quick_target({}) is None
    assert quick_create.quick_target({"domain": "e2b.app"}) is None
    local = {"api_key": "k", "api_url": "http://127.0.0.1:1", "sandbox_url": "http://127.0.0.1:1"}
    assert quick_create.quick_target(local) is not None
    assert quick_create.quick_target({**local, "proxy": "http://proxy:3128"}) is None
    monkeypatch.setenv("E2B_DEBUG", "true")
    assert quick_create.quick_target(local) is None


def test_a_refused_create_gives_the_sdks_own_error(
    local_service: RunningService, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in local_service.sdk_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("E2B_API_KEY", "e2b_" + "0" * 40)  # well-formed, but not the service's

    def start_error(defer_sdk: bool) -> str:
        session = SandboxSession(SessionConfig(backend="cloud"))
        session.defer_sdk = defer_sdk

        async def start() -> None:
            try:
                await session.start()
            finally:
                await session.close()

        with pytest.raises(SandboxUnavailable) as raised:
            asyncio.run(start())
        return str(raised.value)

    assert start_error(defer_sdk=True) == start_error(defer_sdk=False)
    assert "API key" in start_error(defer_sdk=True)


_DEFERRED_SESSION = textwrap.dedent(
    """
    import asyncio, json, sys
    from e2b_kernel.config import SessionConfig
    from e2b_kernel.core import SandboxSession

    async def main():
        session = SandboxSession(SessionConfig(backend="cloud"))
        session.defer_sdk = True
        await session.start()
        report = {"sdk_after_start": "e2b" in sys.modules}
        report["contexts"] = await session.code_context_ids()
        report["jupyter_answers"] = await session.jupyter_endpoint().probe() is None
        report["sdk_before_first_cell_ended"] = "e2b" in sys.modules
        report["httpx_before_first_cell_ended"] = "httpx" in sys.modules
        session.hold_busy(True)
        session.hold_busy(False)  # a front end's first cell ended: the SDK object follows
        await session._sdk_build
        report["same_sandbox"] = session.sandbox.sandbox_id == session.sandbox_id
        await session.write_file("/home/user/adopted.txt", b"through the SDK object")
        report["read_back"] = (await session.read_file("/home/user/adopted.txt")).decode()
        report["end_at"] = (await session.status())["end_at"] is not None
        report["sandbox_id"] = session.sandbox_id
        await session.close()
        print(json.dumps(report))

    asyncio.run(main())
    """
)


def test_a_deferred_session_reaches_its_first_cell_without_the_sdk(
    local_service: RunningService,
) -> None:
    env = {**os.environ, **local_service.sdk_env()}
    env.pop("E2B_DEBUG", None)
    done = subprocess.run(
        [sys.executable, "-c", _DEFERRED_SESSION],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["sdk_after_start"] is False
    assert report["sdk_before_first_cell_ended"] is False
    assert report["httpx_before_first_cell_ended"] is False  # see core/rest.py
    assert report["jupyter_answers"] is True
    assert len(report["contexts"]) == 1  # the default Python context, found without the SDK
    assert report["same_sandbox"] is True
    assert report["read_back"] == "through the SDK object"
    assert report["end_at"] is True
    assert report["sandbox_id"] not in _running_ids(local_service)  # close killed it


def _running_ids(service: RunningService) -> list[str]:
    async def listed() -> list[str]:
        opts = {"api_key": service.api_key, "api_url": service.url, "sandbox_url": service.url}
        paginator = sdk.async_sandbox().list(**opts)
        found: list[str] = []
        while paginator.has_next:
            found.extend(info.sandbox_id for info in await paginator.next_items())
        return found

    return asyncio.run(listed())


def test_the_key_and_tokens_stay_out_of_reprs() -> None:
    """A record that reaches a log line or a traceback (``%r``) shows no secret."""
    target = quick_create.QuickTarget("http://127.0.0.1:1", "e2b_secret_key", "http://s", 60.0)
    created = quick_create.CreatedSandbox(
        "sbx", "http://s", None, "0.6.5", "secret-envd-token", "secret-traffic-token"
    )
    shown = repr(target) + repr(created)
    assert "secret" not in shown
    assert "sbx" in shown
