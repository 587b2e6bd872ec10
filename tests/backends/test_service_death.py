"""How a kernel tells a dead local service from a live one after a connection broke.

A live service's answer must be final at once: a Jupyter Server that could not be reached
made every request wait out a two-second grace, and the kernel_info requests a front end sends
while it waits for a kernel queued up behind each other (a cell took 14 s to fail). A dying
one must never pass for alive: Linux sets a process's exit flag before it closes its sockets.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from e2b_kernel.backends import backend as backend_module
from e2b_kernel.backends.backend import Backend
from e2b_kernel.backends.handles import ServiceHandle, begun_to_exit
from e2b_kernel.config import SessionConfig

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="needs Linux's /proc to read a process's state"
)

# Listens on loopback, prints its port, then waits for its stdin to close.
LISTENER = """
import socket, sys
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
print(server.getsockname()[1], flush=True)
sys.stdin.read()
"""

# Renames itself (the name /proc shows in parentheses) to one holding ") Z 1 ", then waits.
ODD_NAME = """
import ctypes, sys
ctypes.CDLL(None).prctl(15, b"x) Z 1 (", 0, 0, 0)  # PR_SET_NAME
print("named", flush=True)
sys.stdin.read()
"""


def _spawn(code: str) -> tuple[subprocess.Popen[str], str]:
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    return child, child.stdout.readline().strip()


def _backend_with(service: ServiceHandle) -> Backend:
    backend = Backend(SessionConfig(), logging.getLogger("test"))
    backend.service = service
    return backend


def test_a_running_process_has_not_begun_to_exit_whatever_its_name() -> None:
    child, said = _spawn(ODD_NAME)
    try:
        assert said == "named"
        assert Path(f"/proc/{child.pid}/comm").read_text().strip() == "x) Z 1 ("
        assert begun_to_exit(child.pid) is False
    finally:
        child.kill()
        child.wait()


def test_a_zombie_and_a_reaped_process_have_begun_to_exit() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    # Not reaped yet: a zombie once it ended (waitid with WNOWAIT leaves it one).
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    assert begun_to_exit(child.pid) is True
    child.wait()
    assert begun_to_exit(child.pid) is True  # gone


def test_a_live_service_is_not_lost_and_the_answer_does_not_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    child, port = _spawn(LISTENER)
    try:
        service = ServiceHandle(f"http://127.0.0.1:{port}", "key", "test", child.pid)
        assert service.death_seen_at_once()

        async def no_grace(delay: float) -> None:
            raise AssertionError(f"waited {delay} s for a service that answers")

        monkeypatch.setattr(backend_module.asyncio, "sleep", no_grace)
        backend = _backend_with(service)
        assert asyncio.run(backend.service_lost()) is False
        assert backend.service is service  # kept
    finally:
        child.kill()
        child.wait()


def test_a_killed_service_is_lost_as_soon_as_its_port_is_closed() -> None:
    child, port = _spawn(LISTENER)
    service = ServiceHandle(f"http://127.0.0.1:{port}", "key", "test", child.pid)
    connection = socket.create_connection(("127.0.0.1", int(port)))
    try:
        child.kill()
        # The peer's view of the death: the connection ends (reset: it was never accepted).
        # From then on the service is dead.
        connection.settimeout(30)
        with pytest.raises(ConnectionResetError):
            connection.recv(1)
        assert service.alive() is False
        backend = _backend_with(service)
        assert asyncio.run(backend.service_lost()) is True
        assert backend.service is None
    finally:
        connection.close()
        child.kill()
        child.wait()
