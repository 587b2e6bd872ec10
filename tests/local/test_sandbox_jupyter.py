"""The Jupyter Server inside every local sandbox, as E2B's code-interpreter template runs one:
port 8888, no token, root /home/user, reached through the service's sandbox-port proxy."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from e2b_code_interpreter import Sandbox
from local_helpers import sdk_options, wait_for

from e2b_kernel.local import RunningService


@pytest.fixture(scope="module")
def sandbox(local_service: RunningService) -> Iterator[Sandbox]:
    sbx = Sandbox.create(timeout=300, **sdk_options(local_service))
    try:
        yield sbx
    finally:
        sbx.kill()


@pytest.fixture(scope="module")
def jupyter(local_service: RunningService, sandbox: Sandbox) -> Iterator[httpx.Client]:
    """An HTTP client for port 8888 of the sandbox, once the server answers."""
    headers = {"E2b-Sandbox-Id": sandbox.sandbox_id, "E2b-Sandbox-Port": "8888"}
    with httpx.Client(base_url=local_service.url, headers=headers, timeout=60) as http:
        wait_for(lambda: http.get("/api/status").status_code == 200, 90, "Jupyter on 8888")
        yield http


def test_port_8888_serves_jupyter_without_a_token(jupyter: httpx.Client) -> None:
    status = jupyter.get("/api/status")
    assert status.status_code == 200
    assert {"started", "kernels", "connections"} <= set(status.json())
    kernels = jupyter.get("/api/kernels")
    assert kernels.status_code == 200
    assert isinstance(kernels.json(), list)
    specs = jupyter.get("/api/kernelspecs").json()
    assert "python3" in specs["kernelspecs"]


def test_its_root_is_the_sandbox_home(sandbox: Sandbox, jupyter: httpx.Client) -> None:
    sandbox.files.write("/home/user/seen_by_jupyter.txt", "contents")
    model = jupyter.get("/api/contents/seen_by_jupyter.txt").json()
    assert model["content"] == "contents"
    # An API client needs no XSRF token: it can write, too.
    put = jupyter.put(
        "/api/contents/from_jupyter.txt",
        json={"type": "file", "format": "text", "content": "written over 8888"},
    )
    assert put.status_code in (200, 201), put.text
    assert sandbox.files.read("/home/user/from_jupyter.txt") == "written over 8888"
