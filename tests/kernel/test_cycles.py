"""Many kernel start/stop cycles, polite and SIGKILL, leave no sandbox, no process and no lease
file."""

from __future__ import annotations

import signal
from pathlib import Path

import psutil
import pytest

from e2b_kernel.local import RunningService
from e2b_kernel.local.service.lease import GRACE

from . import sandboxes
from .harness import Kernel, clean_env
from .private_backend import leases_naming, private_env, private_service

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


def test_start_stop_cycles_on_the_private_backend_leave_no_process_and_no_lease(
    tmp_path: Path,
) -> None:
    """Three kernels on the private backend, each ended one of three ways: a polite
    shutdown, SIGKILL of the kernel, and SIGKILL of the kernel and its service both (the worst
    case: nothing can remove the lease file). Every process goes, and no lease is left."""
    env = private_env(tmp_path)
    services: set[int] = set()
    leftovers: list[psutil.Process] = []
    for cycle in range(3):
        kernel = Kernel(tmp_path / f"cycle{cycle}", env)
        try:
            reply, _ = kernel.run(f"cycle = {cycle}\ncycle")
            assert reply["status"] == "ok"
            kernel_process = psutil.Process(kernel.pid)
            service = private_service(kernel)
            services.add(service.pid)
            leftovers += [kernel_process, *kernel_process.children(recursive=True)]
            if cycle % 3 == 0:
                kernel.shutdown()
                continue
            kernel_process.send_signal(signal.SIGKILL)
            if cycle % 3 == 2:
                service.send_signal(signal.SIGKILL)
            kernel_process.wait(30)
        finally:
            kernel.close()
    # After SIGKILL of the kernel alone the service notices its free lease and stops within
    # GRACE seconds; a SIGKILLed service's sandboxes die with it (bubblewrap's die-with-parent).
    _, alive = psutil.wait_procs(leftovers, timeout=GRACE + 30)
    assert alive == []
    # SIGKILLed services could not remove their lease files: the next launch sweeps them.
    kernel = Kernel(tmp_path / "sweeper", env)
    try:
        assert kernel.run("1")[0]["status"] == "ok"
    finally:
        kernel.shutdown()
        kernel.close()
    assert leases_naming(services) == []


def test_sigkill_leaves_the_sandbox_to_its_timeout(
    tmp_path: Path, local_service: RunningService
) -> None:
    tag = sandboxes.new_tag()
    env = clean_env(
        **local_service.sdk_env(),
        E2B_KERNEL_BACKEND="cloud",
        E2B_KERNEL_SANDBOX_TIMEOUT="3",
        E2B_KERNEL_METADATA=f"test={tag}",
        JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"),
    )
    for cycle in range(3):
        kernel = Kernel(tmp_path / f"cycle{cycle}", env)
        try:
            kernel.run("1")
            psutil.Process(kernel.pid).send_signal(signal.SIGKILL)
        finally:
            kernel.close()
    assert sandboxes.wait_for_count(local_service, tag, 0, timeout=60) == []
