"""The kernel's private service started early (``hosted.launch_early``), with a fake launch."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2b_kernel.backends import HostedService, discard_early, hosted, launch_early, restart_state

PORT_NAMES = ("shell", "iopub", "stdin", "control", "hb")


class _Fake:
    def __init__(self, isolation: str) -> None:
        self.isolation = isolation
        self.stopped = threading.Event()

    def stop(self) -> None:
        self.stopped.set()


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[_Fake]]:
    made: list[_Fake] = []

    def fake_launch(isolation: str) -> Any:
        made.append(_Fake(isolation))
        return made[-1]

    monkeypatch.setattr(HostedService, "_launch", staticmethod(fake_launch))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setenv("E2B_KERNEL_BACKEND", "local")
    monkeypatch.delenv("E2B_KERNEL_LOCAL_ISOLATION", raising=False)
    monkeypatch.setattr(hosted, "_held_ports", [])
    yield made
    discard_early()
    for holder in hosted._held_ports:
        holder.close()


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
    assert launched == [service] and not launched[0].stopped.is_set()
    discard_early()  # claimed: nothing to stop
    assert not launched[0].stopped.is_set()


def test_another_isolation_stops_it_and_launches_anew(
    launched: list[_Fake], connection: str
) -> None:
    launch_early(connection)
    service = HostedService.launch(isolation="none")
    assert service is launched[-1] and service.isolation == "none"
    assert launched[0].isolation == "auto" and launched[0].stopped.wait(5)


def test_an_unclaimed_service_is_stopped(launched: list[_Fake], connection: str) -> None:
    launch_early(connection)
    discard_early()
    assert len(launched) == 1 and launched[0].stopped.wait(5)


def test_not_for_the_cloud_backend(
    launched: list[_Fake], connection: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("E2B_KERNEL_BACKEND", "cloud")
    launch_early(connection)
    assert hosted._early is None


def test_not_after_a_restart(launched: list[_Fake], tmp_path: Path) -> None:
    connection = str(tmp_path / "kernel-1.json")
    restart_state.put(connection, {"sandbox_id": "abc"})
    launch_early(connection)
    assert hosted._early is None  # the restarted process adopts the previous service


def test_the_kernels_ports_are_held_before_the_service_starts(
    launched: list[_Fake], connection: str
) -> None:
    """The kernel binds them only after its imports: nothing else may be given them."""
    ports = {v for k, v in json.loads(Path(connection).read_text()).items() if k.endswith("_port")}
    launch_early(connection)
    assert {holder.getsockname()[1] for holder in hosted._held_ports} == ports
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
    assert hosted._early is None
