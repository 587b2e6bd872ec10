"""The default context's kernel starts beside the sandbox's Jupyter Server, not after it, and the
server adopts it (``sandbox/jupyter_provisioner.py``): it must then be that server's kernel in
every way a client of port 8888 or ``/execute`` can see (interrupt, death, restart, delete)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2b_code_interpreter import Sandbox
from jupyter_over_8888 import execute_over_8888
from local_helpers import sdk_options, wait_for

from e2b_kernel.local import RunningService
from e2b_kernel.local.sandbox import jupyter_provisioner

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def sandbox(local_service: RunningService) -> Iterator[Sandbox]:
    sbx = Sandbox.create(timeout=300, **sdk_options(local_service))
    try:
        yield sbx
    finally:
        sbx.kill()


def _port_8888(service: RunningService, sandbox: Sandbox) -> httpx.Client:
    headers = {"E2b-Sandbox-Id": sandbox.sandbox_id, "E2b-Sandbox-Port": "8888"}
    return httpx.Client(base_url=service.url, headers=headers, timeout=60)


def _processes(sandbox: Sandbox) -> dict[int, tuple[int, str]]:
    """pid -> (ppid, command line) of every process in the sandbox."""
    out = sandbox.commands.run("ps -eo pid=,ppid=,args=").stdout
    table = {}
    for line in out.splitlines():
        pid, ppid, args = line.split(None, 2)
        table[int(pid)] = (int(ppid), args)
    return table


def _kernel_processes(sandbox: Sandbox, kernel_id: str) -> list[tuple[int, int]]:
    """(pid, ppid) of the processes running kernel ``kernel_id``."""
    wanted = f"kernel-{kernel_id}.json"
    return [(pid, ppid) for pid, (ppid, args) in _processes(sandbox).items() if wanted in args]


def _server_pid(sandbox: Sandbox) -> int:
    servers = [pid for pid, (_, args) in _processes(sandbox).items() if "jupyter_server" in args]
    assert len(servers) == 1, servers
    return servers[0]


def test_the_default_kernel_is_started_beside_the_server_and_adopted(
    local_service: RunningService, sandbox: Sandbox
) -> None:
    default = sandbox.list_code_contexts()[0]
    with _port_8888(local_service, sandbox) as http:
        assert [k["id"] for k in http.get("/api/kernels").json()] == [default.id]
        sessions = [s for s in http.get("/api/sessions").json() if s["kernel"]["id"] == default.id]
    assert len(sessions) == 1
    # One kernel process, started by the agent beside the server: not the server's child.
    [(pid, ppid)] = _kernel_processes(sandbox, default.id)
    assert ppid != _server_pid(sandbox)
    # What the server would have given it: its session's name, the server's environment.
    seen = sandbox.run_code(
        "import os; (os.environ.get('JPY_SESSION_NAME'), __session__, os.getcwd(), "
        "os.environ.get('JUPYTER_RUNTIME_DIR') is not None, os.getpid())"
    )
    assert seen.error is None, seen.error
    assert seen.text is not None
    assert sessions[0]["path"] in seen.text
    assert "'/home/user'" in seen.text and "True" in seen.text and f"{pid})" in seen.text
    # The marker is consumed: nothing would adopt that process a second time.
    listing = sandbox.commands.run("ls /run/e2b/sockets").stdout
    assert ".prestarted" not in listing


def test_the_adopted_kernel_is_interrupted_restarted_and_deleted_by_the_server(
    local_service: RunningService, sandbox: Sandbox
) -> None:
    kernel_id = sandbox.list_code_contexts()[0].id
    sandbox.run_code("kept = 1")
    with _port_8888(local_service, sandbox) as http:
        # Interrupt (REST, as JupyterLab and our relay send it) reaches the adopted process.
        answers: list[int] = []
        began = time.monotonic()
        try:
            reply, _ = execute_over_8888(
                local_service.url,
                sandbox.sandbox_id,
                kernel_id,
                "import time; print('started', flush=True); time.sleep(300)",
                during=lambda: answers.append(
                    http.post(f"/api/kernels/{kernel_id}/interrupt").status_code
                ),
                wait=90,
            )
        except AssertionError as exc:  # say what the server answered and what runs now
            processes = _kernel_processes(sandbox, kernel_id)
            raise AssertionError(f"{exc}; interrupt answered {answers}; {processes}") from None
        assert answers == [204]
        assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt", reply
        assert time.monotonic() - began < 60
        assert sandbox.run_code("kept").text == "1"  # interrupted, not restarted
        [(adopted, _)] = _kernel_processes(sandbox, kernel_id)

        # Restart: the adopted process ends, a new one is the server's own child.
        assert http.post(f"/api/kernels/{kernel_id}/restart").status_code == 200
        [(pid, ppid)] = _kernel_processes(sandbox, kernel_id)
        assert pid != adopted and ppid == _server_pid(sandbox)
        code = "fresh = 'kept' in globals()"
        reply, _ = execute_over_8888(local_service.url, sandbox.sandbox_id, kernel_id, code)
        assert reply["status"] == "ok", reply
        assert sandbox.run_code("fresh").text == "False"

        # Delete: the kernel and its process are gone.
        assert http.delete(f"/api/kernels/{kernel_id}").status_code == 204
        wait_for(lambda: not _kernel_processes(sandbox, kernel_id), 30, "the kernel to end")


def test_the_server_notices_when_the_adopted_kernel_dies(
    local_service: RunningService, sandbox: Sandbox
) -> None:
    """The server's restarter watches the adopted process through its pidfd: a kernel that
    exits is restarted under the same id, as one the server started itself would be."""
    kernel_id = sandbox.list_code_contexts()[0].id
    [(adopted, _)] = _kernel_processes(sandbox, kernel_id)
    sandbox.commands.run(f"kill -9 {adopted}")

    def replaced() -> bool:
        return [pid for pid, _ in _kernel_processes(sandbox, kernel_id)] not in ([], [adopted])

    wait_for(replaced, 60, "the server to restart the dead kernel")
    [(_, ppid)] = _kernel_processes(sandbox, kernel_id)
    assert ppid == _server_pid(sandbox)
    with _port_8888(local_service, sandbox) as http:
        assert [k["id"] for k in http.get("/api/kernels").json()] == [kernel_id]


# ---- claim(): the provisioner's adoption rule, on host processes ------------------------------


def _sleeper(tmp_path: Path, connection_file: str) -> subprocess.Popen:
    code = "import sys, time; time.sleep(120)"
    process = subprocess.Popen([sys.executable, "-c", code, "-f", connection_file])
    # Popen returns once exec has begun; the new command line shows a moment later (empty
    # until then). The service writes its marker long after that point; so does this test.
    cmdline = Path(f"/proc/{process.pid}/cmdline")
    wait_for(lambda: connection_file.encode() in cmdline.read_bytes(), 30, "the exec")
    return process


def test_claim_adopts_the_named_kernel_once_and_follows_its_end(tmp_path: Path) -> None:
    connection = str(tmp_path / "kernel-x.json")
    process = _sleeper(tmp_path, connection)
    try:
        (tmp_path / "kernel-x.prestarted").write_text(str(process.pid))
        adopted = jupyter_provisioner.claim(connection)
        assert adopted is not None and adopted.pid == process.pid
        assert not (tmp_path / "kernel-x.prestarted").exists()
        assert jupyter_provisioner.claim(connection) is None  # one adoption only
        assert adopted.poll() is None
        with pytest.raises(subprocess.TimeoutExpired):
            adopted.wait(timeout=0.05)
        adopted.send_signal(signal.SIGTERM)
        process.wait(timeout=30)  # reaped by its parent, as the agent reaps a kernel
        assert adopted.wait(timeout=30) == -1
        adopted.kill()  # like Popen: signals to an ended process are nothing
    finally:
        process.kill()
        process.wait()


def test_claim_refuses_a_marker_that_names_another_process(tmp_path: Path) -> None:
    connection = str(tmp_path / "kernel-y.json")
    other = _sleeper(tmp_path, str(tmp_path / "kernel-z.json"))
    try:
        for text in (str(other.pid), str(os.getpid()), "not a pid", "999999999"):
            (tmp_path / "kernel-y.prestarted").write_text(text)
            assert jupyter_provisioner.claim(connection) is None, text
            assert not (tmp_path / "kernel-y.prestarted").exists()
        assert jupyter_provisioner.claim(connection) is None  # no marker at all
    finally:
        other.kill()
        other.wait()
