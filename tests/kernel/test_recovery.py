"""The kernel recovers when its private local service dies, and leaves no lease file behind."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from e2b_kernel.backends.hosted import LEASE_DIR

from .conftest import TRANSPORTS
from .harness import Kernel, clean_env

StartKernel = Callable[..., Kernel]

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


def private_service(kernel: Kernel) -> psutil.Process:
    """The kernel's private local service: its `python -m e2b_kernel.local` child."""
    for child in psutil.Process(kernel.pid).children():
        if "e2b_kernel.local" in " ".join(child.cmdline()):
            return child
    raise AssertionError("the kernel has no private local service")


def leases_naming(pids: set[int]) -> list[Path]:
    """Lease files that name one of these service pids."""
    found = []
    for path in LEASE_DIR.glob("lease-*.lock"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) in pids:
            found.append(path)
    return found


def wait_dead(process: psutil.Process, timeout: float) -> bool:
    """Until ``process`` is gone or a zombie (its parent, not we, reaps it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def private_env(tmp_path: Path, transport: str = "auto") -> dict[str, str]:
    return clean_env(
        E2B_KERNEL_BACKEND="local",
        E2B_KERNEL_TRANSPORT=transport,
        JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"),
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_service_killed_mid_cell_is_a_lost_sandbox_then_a_new_one(
    start_kernel: StartKernel, tmp_path: Path, transport: str
) -> None:
    kernel = start_kernel(private_env(tmp_path, transport))
    reply, _ = kernel.run("lost_value = 1")
    assert reply["status"] == "ok"
    service = private_service(kernel)
    msg_id = kernel.send("import time\nprint('started', flush=True)\ntime.sleep(120)")
    kernel.wait_for_stream(msg_id, "started")
    service.send_signal(signal.SIGKILL)
    reply, outputs = kernel.collect(msg_id, timeout=90)
    assert reply["ename"] == "SandboxLost", reply
    assert "stopped" in reply["evalue"] and "gone" in reply["evalue"]
    assert "still running" not in reply["evalue"]
    assert [o.msg_type for o in outputs] == ["error"]

    reply, outputs = kernel.run("'lost_value' in globals()", timeout=180)
    assert reply["status"] == "ok", outputs
    notices = [o for o in outputs if o.msg_type == "stream"]
    assert len(notices) == 1 and "NEW sandbox" in notices[0].content["text"]
    assert outputs[-1].content["data"]["text/plain"] == "False"
    assert private_service(kernel).pid != service.pid  # a fresh service serves it

    kernel.run("after = 2")
    kernel.km.restart_kernel(now=False)
    kernel.kc.wait_for_ready(timeout=90)
    reply, outputs = kernel.run("1 + 1", timeout=180)
    assert reply["status"] == "ok", outputs
    assert outputs[-1].content["data"]["text/plain"] == "2"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_service_killed_while_idle_is_a_lost_sandbox_on_the_next_cell(
    start_kernel: StartKernel, tmp_path: Path, transport: str
) -> None:
    kernel = start_kernel(private_env(tmp_path, transport))
    kernel.run("lost_value = 1")
    service = private_service(kernel)
    service.send_signal(signal.SIGKILL)
    assert wait_dead(service, 30)
    reply, _ = kernel.run("lost_value", timeout=120)
    assert reply["ename"] == "SandboxLost"
    assert "still running" not in reply["evalue"]
    reply, _ = kernel.run("1", timeout=180)
    assert reply["status"] == "ok"


def test_ten_start_kill_cycles_leave_no_lease_file(tmp_path: Path) -> None:
    services: set[int] = set()
    processes: list[psutil.Process] = []
    for cycle in range(10):
        kernel = Kernel(tmp_path / f"cycle{cycle}", private_env(tmp_path))
        try:
            reply, _ = kernel.run("1")
            assert reply["status"] == "ok"
            service = private_service(kernel)
            services.add(service.pid)
            kernel_process = psutil.Process(kernel.pid)
            processes += [kernel_process, service]
            kernel_process.send_signal(signal.SIGKILL)
            if cycle % 2:  # the worst case: the service dies by SIGKILL too
                service.send_signal(signal.SIGKILL)
            kernel_process.wait(30)
        finally:
            kernel.close()
    psutil.wait_procs(processes, timeout=60)
    # Services that were SIGKILLed could not remove their lease: the next launch sweeps them.
    kernel = Kernel(tmp_path / "sweeper", private_env(tmp_path))
    try:
        assert kernel.run("1")[0]["status"] == "ok"
    finally:
        kernel.shutdown()
        kernel.close()
    assert leases_naming(services) == []
    assert list(Path("/tmp").glob("e2b-kernel-lease-*.lock")) == []
