"""The kernel's private service started early (``hosted.launch_early``), with a fake launch."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2b_kernel.backends import HostedService, discard_early, hosted, launch_early, restart_state


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
    yield made
    discard_early()


def test_launch_claims_the_early_service(launched: list[_Fake]) -> None:
    launch_early(None)
    service = HostedService.launch(isolation="auto")
    assert launched == [service] and not launched[0].stopped.is_set()
    discard_early()  # claimed: nothing to stop
    assert not launched[0].stopped.is_set()


def test_another_isolation_stops_it_and_launches_anew(launched: list[_Fake]) -> None:
    launch_early(None)
    service = HostedService.launch(isolation="none")
    assert service is launched[-1] and service.isolation == "none"
    assert launched[0].isolation == "auto" and launched[0].stopped.wait(5)


def test_an_unclaimed_service_is_stopped(launched: list[_Fake]) -> None:
    launch_early(None)
    discard_early()
    assert len(launched) == 1 and launched[0].stopped.wait(5)


def test_not_for_the_cloud_backend(launched: list[_Fake], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E2B_KERNEL_BACKEND", "cloud")
    launch_early(None)
    assert hosted._early is None


def test_not_after_a_restart(launched: list[_Fake], tmp_path: Path) -> None:
    connection = str(tmp_path / "kernel-1.json")
    restart_state.put(connection, {"sandbox_id": "abc"})
    launch_early(connection)
    assert hosted._early is None  # the restarted process adopts the previous service
