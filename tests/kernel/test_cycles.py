"""Many kernel start/stop cycles, polite and SIGKILL, leave no sandbox and no process."""

from __future__ import annotations

import signal
from pathlib import Path

import psutil
import pytest

from e2b_kernel.local import RunningService
from e2b_kernel.local.service.lease import GRACE

from . import sandboxes
from .harness import Kernel, clean_env

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


def test_twenty_cycles_private_backend(tmp_path: Path) -> None:
    env = clean_env(E2B_KERNEL_BACKEND="local", JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"))
    leftovers: list[psutil.Process] = []
    for cycle in range(20):
        kernel = Kernel(tmp_path / f"cycle{cycle}", env)
        try:
            reply, _ = kernel.run(f"cycle = {cycle}\ncycle")
            assert reply["status"] == "ok"
            kernel_process = psutil.Process(kernel.pid)
            leftovers += [kernel_process, *kernel_process.children(recursive=True)]
            if cycle % 4 == 3:
                kernel_process.send_signal(signal.SIGKILL)
                kernel_process.wait(30)
            else:
                kernel.shutdown()
        finally:
            kernel.close()
    # After SIGKILL the helper notices its free lease and stops within GRACE seconds.
    _, alive = psutil.wait_procs(leftovers, timeout=GRACE + 30)
    assert alive == []


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
