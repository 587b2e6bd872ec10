"""The kernel's private service started early (``early.launch_early``), with a fake launch."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2b_kernel.backends import HostedService, discard_early, early, launch_early, restart_state

PORT_NAMES = ("shell", "iopub", "stdin", "control", "hb")


class _Fake:
    """A started service with its lease, as ``early.start_leased`` returns it."""

    def __init__(self, isolation: str, lease_path: str) -> None:
        self.isolation = isolation
        self.child = self  # the service handle's fields, on the same object
        self.url, self.api_key, self.pid = "http://127.0.0.1:1", "key", 1
        self.lease_path, self.lease_fd = lease_path, os.open(lease_path, os.O_CREAT | os.O_RDWR)
        self.stopped = threading.Event()

    def stop(self) -> None:
        self.stopped.set()


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[_Fake]]:
    made: list[_Fake] = []

    def fake_launch(isolation: str) -> Any:
        made.append(_Fake(isolation, str(tmp_path / f"lease-{len(made)}.lock")))
        return made[-1]

    monkeypatch.setattr(early, "start_leased", fake_launch)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setenv("E2B_KERNEL_BACKEND", "local")
    monkeypatch.delenv("E2B_KERNEL_LOCAL_ISOLATION", raising=False)
    monkeypatch.setattr(early, "_held_ports", [])
    yield made
    discard_early()
    for holder in early._held_ports:
        holder.close()
    for fake in made:
        with contextlib.suppress(OSError):
            os.close(fake.lease_fd)


@pytest.fixture
def connection(tmp_path: Path) -> str:
    """A kernel's connection file, as jupyter_client writes it before launching the kernel."""
    path = tmp_path / "kernel-1.json"
    ports = {f"{name}_port": port for name, port in zip(PORT_NAMES, _free_ports(), strict=True)}
    path.write_text(json.dumps({"transport": "tcp", "ip": "127.0.0.1", "key": "k", **ports}))
    return str(path)


def test_launch_claims_the_early_service(launched: list[_Fake], connection: str) -> None:
    launch_early(connection)
    service = HostedService.launch(isolation="auto")
    assert len(launched) == 1 and service._child is launched[0]
    assert service.lease_path == launched[0].lease_path and not launched[0].stopped.is_set()
    discard_early()  # claimed: nothing to stop
    assert not launched[0].stopped.is_set()


def test_another_isolation_stops_it_and_launches_anew(
    launched: list[_Fake], connection: str
) -> None:
    launch_early(connection)
    launch = early._early
    assert launch is not None
    service = HostedService.launch(isolation="none")
    assert service.isolation == "none" and not service._child.stopped.is_set()
    first = launch.future.result(timeout=5)  # started on its thread, then stopped
    assert first.isolation == "auto" and first.stopped.wait(5) and len(launched) == 2


def test_an_unclaimed_service_is_stopped(launched: list[_Fake], connection: str) -> None:
    launch_early(connection)
    launch = early._early
    assert launch is not None
    discard_early()
    assert launch.future.result(timeout=5).stopped.wait(5) and len(launched) == 1


def test_not_for_the_cloud_backend(
    launched: list[_Fake], connection: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("E2B_KERNEL_BACKEND", "cloud")
    launch_early(connection)
    assert early._early is None


def test_not_after_a_restart(launched: list[_Fake], tmp_path: Path) -> None:
    connection = str(tmp_path / "kernel-1.json")
    restart_state.put(connection, {"sandbox_id": "abc"})
    launch_early(connection)
    assert early._early is None  # the restarted process adopts the previous service


def test_the_kernels_ports_are_held_before_the_service_starts(
    launched: list[_Fake], connection: str
) -> None:
    """The kernel binds them only after its imports: nothing else may be given them."""
    ports = {v for k, v in json.loads(Path(connection).read_text()).items() if k.endswith("_port")}
    launch_early(connection)
    assert {holder.getsockname()[1] for holder in early._held_ports} == ports
    for port in ports:
        with socket.socket() as other, pytest.raises(OSError, match="Address already in use"):
            other.bind(("127.0.0.1", port))


def _free_ports() -> list[int]:
    sockets = [socket.create_server(("127.0.0.1", 0)) for _ in PORT_NAMES]
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.parametrize("contents", [None, "not json", "[]", '{"shell_port": "x"}'])
def test_not_when_the_kernels_ports_are_unknown(
    launched: list[_Fake], tmp_path: Path, contents: str | None
) -> None:
    connection = tmp_path / "kernel-2.json"
    if contents is not None:
        connection.write_text(contents)
    launch_early(str(connection))
    launch_early(None)
    assert early._early is None


BACKENDS = [None, "", "auto", "local", "LOCAL", "cloud", "nonsense"]
ISOLATIONS = [None, "", "auto", "none", "NONE", "namespaces"]


@pytest.mark.parametrize("api_key", [None, "", "e2b_key"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_the_environment_is_read_as_the_session_config_reads_it(
    monkeypatch: pytest.MonkeyPatch, backend: str | None, isolation: str | None, api_key: str | None
) -> None:
    """The launcher judges from the environment alone, before traitlets is imported; it must
    want the private service exactly when ``SessionConfig`` (which reads the same variables)
    will, or it starts one for nothing, or none for the kernel that needs it."""
    from e2b_kernel.config import SessionConfig
    from e2b_kernel.errors import ConfigurationError

    env = {"E2B_KERNEL_BACKEND": backend, "E2B_KERNEL_LOCAL_ISOLATION": isolation}
    env["E2B_API_KEY"] = api_key
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    try:
        config = SessionConfig()
    except ConfigurationError:
        expected = None  # the kernel reports the error and starts no service
    else:
        local = config.resolved_backend() == "local"
        expected = str(config.local_isolation) if local else None
    assert early.private_service_isolation(os.environ) == expected
