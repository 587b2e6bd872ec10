"""Bad input gets E2B-shaped errors and the service keeps serving (raw HTTP + the SDK)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from e2b import Sandbox
from local_helpers import sandbox_headers

from e2b_kernel.local import RunningService


@pytest.fixture
def client(local_service: RunningService) -> Iterator[httpx.Client]:
    headers = {"X-API-Key": local_service.api_key}
    with httpx.Client(base_url=local_service.url, headers=headers, timeout=60) as http:
        yield http


@pytest.fixture(scope="module")
def live(local_service: RunningService) -> Iterator[Sandbox]:
    opts = {"api_key": local_service.api_key, "api_url": local_service.url}
    sandbox = Sandbox.create(timeout=300, sandbox_url=local_service.url, **opts)
    try:
        yield sandbox
    finally:
        sandbox.kill()


@pytest.fixture(scope="module")
def live_id(live: Sandbox) -> str:
    return live.sandbox_id


def _envd(sandbox_id: str, port: int = 49983) -> dict[str, str]:
    return {"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": str(port)}


def _assert_error(response: httpx.Response, status: int, text: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == status
    assert text in body["message"]


def test_missing_or_empty_api_key_is_401(local_service: RunningService) -> None:
    with httpx.Client(base_url=local_service.url) as http:
        _assert_error(http.get("/v2/sandboxes"), 401, "API key")
        _assert_error(http.get("/v2/sandboxes", headers={"X-API-Key": ""}), 401, "API key")


def test_malformed_json_bodies(client: httpx.Client, live_id: str) -> None:
    headers = {"Content-Type": "application/json"}
    _assert_error(client.post("/v2/sandboxes", content=b"{nope", headers=headers), 400, "JSON")
    _assert_error(client.post("/v2/sandboxes", content=b"[1, 2]", headers=headers), 400, "object")
    _assert_error(client.post(f"/sandboxes/{live_id}/timeout", content=b"\xff"), 400, "JSON")
    _assert_error(client.post("/v2/sandboxes", json={"metadata": {"a": 1}}), 400, "metadata")
    _assert_error(client.post("/v2/sandboxes", json={"envVars": "x"}), 400, "envVars")
    for mask in ("a\r\nX-Injected: 1", "h\u00e9te", 5):  # it becomes a Host header value
        body = {"network": {"maskRequestHost": mask}}
        _assert_error(client.post("/v2/sandboxes", json=body), 400, "maskRequestHost")
    for ports in ("443", [443, "8443"], [0], [65536], [True], {"443": 1}):
        body = {"network": {"httpsPorts": ports}}
        _assert_error(client.post("/v2/sandboxes", json=body), 400, "httpsPorts")


def test_update_network_ignores_fields_outside_its_schema(
    client: httpx.Client, live: Sandbox
) -> None:
    # E2B's update body has egress fields only: a mask (unchecked here) or https ports in an
    # update are not taken, so nothing reaches the port proxy that create would refuse.
    raw = {
        "allow_internet_access": False,
        "maskRequestHost": "a\r\nX-Injected: 1",
        "httpsPorts": "not a list",
        "allowPublicTraffic": False,
    }
    reply = client.put(f"/sandboxes/{live.sandbox_id}/network", json=raw)
    assert reply.status_code == 204, reply.text
    assert live.get_info().network == {"allow_out": [], "deny_out": []}


@pytest.mark.parametrize("timeout", ["60", True, -1, 1.5, 86401])
def test_invalid_timeouts(client: httpx.Client, live_id: str, timeout: object) -> None:
    _assert_error(client.post("/v2/sandboxes", json={"timeout": timeout}), 400, "timeout")
    reply = client.post(f"/sandboxes/{live_id}/timeout", json={"timeout": timeout})
    _assert_error(reply, 400, "timeout")


@pytest.mark.parametrize("metadata", ["a=b=c", "no-equals", "a=1&", "a%zz=1", "a=%2"])
def test_malformed_metadata_filters_are_400(client: httpx.Client, metadata: str) -> None:
    # As E2B's API: every '&'-separated part is exactly one key=value, escapes well formed.
    _assert_error(client.get("/v2/sandboxes", params={"metadata": metadata}), 400, "metadata")


def test_unknown_routes_and_methods(client: httpx.Client) -> None:
    _assert_error(client.get("/no/such/route"), 404, "no such endpoint")
    _assert_error(client.put("/v2/sandboxes"), 405, "not allowed")


def test_unknown_ids(client: httpx.Client) -> None:
    missing = "abcdefghij0123456789"
    _assert_error(client.get(f"/sandboxes/{missing}"), 404, "doesn't exist")
    _assert_error(client.delete(f"/sandboxes/{missing}"), 404, "doesn't exist")
    _assert_error(client.post(f"/sandboxes/{missing}/pause"), 404, "doesn't exist")
    health = client.get("/health", headers=_envd(missing))
    assert health.status_code == 502
    assert health.json() == {
        "sandboxId": missing,
        "message": "The sandbox was not found",
        "code": 502,
    }
    assert health.headers["Should-Retry"] == "false"


def test_closed_port_and_health(client: httpx.Client, live_id: str) -> None:
    assert client.get("/health", headers=_envd(live_id)).status_code == 204
    closed = client.get("/", headers=_envd(live_id, 8080))
    assert closed.status_code == 502
    assert "port is not open" in closed.json()["message"]


def test_envd_files_bad_requests(client: httpx.Client, live: Sandbox) -> None:
    envd = sandbox_headers(live)
    _assert_error(client.get("/files", headers=envd), 400, "path")
    upload = client.post("/files?path=a.txt", headers=envd, files={"other": b"x"})
    _assert_error(upload, 400, "'file'")
    _assert_error(client.get("/nope", headers=envd), 404, "no such envd endpoint")


def test_malformed_connect_rpc(client: httpx.Client, live: Sandbox) -> None:
    headers = {**sandbox_headers(live), "Content-Type": "application/json"}
    reply = client.post("/filesystem.Filesystem/Stat", content=b"{bad", headers=headers)
    assert reply.status_code in (400, 500) and "code" in reply.json()
    reply = client.post("/process.Process/Update", content=b"{}", headers=headers)
    assert reply.json()["code"] == "invalid_argument"
    reply = client.post("/filesystem.Filesystem/Stat", json={"path": "~bob/x"}, headers=headers)
    assert reply.json()["code"] == "invalid_argument"


def test_oversized_bodies_are_413(client: httpx.Client, live_id: str) -> None:
    big = b"x" * (17 * 1024 * 1024)
    headers = {"Content-Type": "application/json"}
    _assert_error(client.post("/v2/sandboxes", content=big, headers=headers), 413, "too large")

    def chunks() -> Iterator[bytes]:
        # Chunked (no Content-Length), as the SDK streams: the limit still applies.
        for _ in range(17):
            yield b"y" * (1024 * 1024)

    reply = client.post("/v2/sandboxes", content=chunks(), headers=headers)
    _assert_error(reply, 413, "too large")


def test_service_still_serves_after_bad_input(local_service: RunningService, live_id: str) -> None:
    opts = {"api_key": local_service.api_key, "api_url": local_service.url}
    sandbox = Sandbox.connect(live_id, sandbox_url=local_service.url, **opts)
    assert sandbox.commands.run("echo fine").stdout == "fine\n"
    listing = httpx.get(
        f"{local_service.url}/v2/sandboxes", headers={"X-API-Key": local_service.api_key}
    )
    assert live_id in json.dumps(listing.json())
