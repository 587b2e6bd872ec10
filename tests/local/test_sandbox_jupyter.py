"""The Jupyter Server inside every local sandbox, as E2B's code-interpreter template runs one:
port 8888, no token, root /home/user, reached through the service's sandbox-port proxy."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from e2b_code_interpreter import Sandbox
from jupyter_over_8888 import execute_over_8888
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


def test_port_8888_answers_as_soon_as_create_returns(local_service: RunningService) -> None:
    """On E2B the template's server is up when create returns: no caller sees it closed."""
    sbx = Sandbox.create(timeout=120, **sdk_options(local_service))
    try:
        # The default python context is listed from the start, as on E2B ...
        contexts = sbx.list_code_contexts()
        assert [context.language for context in contexts] == ["python"]
        headers = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "8888"}
        status = httpx.get(f"{local_service.url}/api/status", headers=headers, timeout=120)
        assert status.status_code == 200, status.text
        # ... and it is the one kernel of port 8888.
        kernels = httpx.get(f"{local_service.url}/api/kernels", headers=headers).json()
        assert [kernel["id"] for kernel in kernels] == [contexts[0].id]
    finally:
        sbx.kill()


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


def _execute_over_8888(
    local_service: RunningService, sandbox: Sandbox, kernel_id: str, code: str
) -> dict[str, Any]:
    """Run code in a kernel of port 8888 as a Jupyter front end does; the execute_result's
    data, or {} when there is none."""
    reply, data = execute_over_8888(local_service.url, sandbox.sandbox_id, kernel_id, code)
    assert reply["status"] == "ok", reply
    return data


def test_run_code_and_port_8888_share_one_namespace(
    local_service: RunningService, sandbox: Sandbox, jupyter: httpx.Client
) -> None:
    sandbox.run_code("shared_value = 6 * 7")
    kernels = jupyter.get("/api/kernels").json()
    assert len(kernels) == 1  # the default python context is the server's kernel
    kernel_id = kernels[0]["id"]
    # ... and its id, as E2B's /contexts lists it, is that kernel's.
    assert kernel_id in {context.id for context in sandbox.list_code_contexts()}
    seen = _execute_over_8888(local_service, sandbox, kernel_id, "shared_value")
    assert seen["text/plain"] == "42"
    _execute_over_8888(local_service, sandbox, kernel_id, "from_jupyter = 'set over 8888'")
    assert sandbox.run_code("from_jupyter.upper()").text.strip("'") == "SET OVER 8888"


def test_a_python_context_is_a_server_kernel_with_its_id(
    local_service: RunningService, sandbox: Sandbox, jupyter: httpx.Client
) -> None:
    """As on E2B, a context's id is its kernel's id on 8888, and a restart keeps it."""
    context = sandbox.create_code_context()
    try:
        kernel_ids = {kernel["id"] for kernel in jupyter.get("/api/kernels").json()}
        assert context.id in kernel_ids
        sessions = jupyter.get("/api/sessions").json()
        assert context.id in {session["kernel"]["id"] for session in sessions}
        sandbox.run_code("kept = 1", context=context)
        sandbox.restart_code_context(context)
        assert context.id in {kernel["id"] for kernel in jupyter.get("/api/kernels").json()}
        after = sandbox.run_code("'kept' in globals()", context=context)
        assert after.text == "False"  # fresh state under the same id
        seen = _execute_over_8888(local_service, sandbox, context.id, "restarted = 2; restarted")
        assert seen["text/plain"] == "2"
        assert sandbox.run_code("restarted * 21", context=context).text == "42"
    finally:
        sandbox.remove_code_context(context)
    assert context.id not in {kernel["id"] for kernel in jupyter.get("/api/kernels").json()}


def test_a_restart_over_8888_is_taken_as_is_by_run_code(
    local_service: RunningService, sandbox: Sandbox, jupyter: httpx.Client
) -> None:
    """A front end restarting the kernel through the REST API (as a relay kernel does) gets
    fresh state, and /execute then uses that very kernel without restarting it again."""
    context = sandbox.create_code_context()
    try:
        sandbox.run_code("before = 1", context=context)
        assert jupyter.post(f"/api/kernels/{context.id}/restart").status_code == 200
        _execute_over_8888(local_service, sandbox, context.id, "after = 5")
        assert sandbox.run_code("after", context=context).text == "5"
        assert sandbox.run_code("'before' in globals()", context=context).text == "False"
    finally:
        sandbox.remove_code_context(context)


def test_the_kernel_list_answers_while_kernels_start(
    sandbox: Sandbox, jupyter: httpx.Client
) -> None:
    """jupyter_server lists a kernel one step before it sets its ``last_activity``, and its
    list then fails with a 500 for every caller; a front end polling /api/kernels (as
    JupyterLab does) while a context starts must never see that."""
    failures: list[str] = []
    starting = threading.Event()
    polls = 0

    def poll() -> None:
        nonlocal polls
        while starting.is_set():
            for path in ("/api/kernels", "/api/status"):
                response = jupyter.get(path)
                polls += 1
                if response.status_code != 200:
                    failures.append(f"{path}: {response.status_code} {response.text[:200]}")

    starting.set()
    pollers = [threading.Thread(target=poll) for _ in range(3)]
    for thread in pollers:
        thread.start()
    try:
        for _ in range(6):
            context = sandbox.create_code_context()
            sandbox.remove_code_context(context)
    finally:
        starting.clear()
        for thread in pollers:
            thread.join()
    assert polls > 0
    assert failures == []


def test_the_kernel_list_shows_each_kernels_activity(
    sandbox: Sandbox, jupyter: httpx.Client
) -> None:
    """``execution_state`` and ``last_activity``, as jupyter_server keeps them from the
    kernel's IOPub (here with a cheaper watch of its own: sandbox/jupyter_activity.py): busy
    while a cell runs, whoever runs it, idle after, and the activity time moves on."""
    (context,) = [c for c in sandbox.list_code_contexts() if c.language == "python"][:1]

    def listed() -> dict[str, Any]:
        kernels = {kernel["id"]: kernel for kernel in jupyter.get("/api/kernels").json()}
        return dict(kernels[context.id])

    wait_for(lambda: listed()["execution_state"] == "idle", 30, "an idle kernel")
    before = listed()["last_activity"]
    cell = threading.Thread(target=sandbox.run_code, args=("import time; time.sleep(4)",))
    cell.start()
    try:
        wait_for(lambda: listed()["execution_state"] == "busy", 30, "a busy kernel")
    finally:
        cell.join()
    wait_for(lambda: listed()["execution_state"] == "idle", 30, "an idle kernel again")
    assert listed()["last_activity"] > before  # ISO 8601 in UTC: ordered as text
