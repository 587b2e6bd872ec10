"""The kernel recovers when its private local service dies."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from .conftest import TRANSPORTS
from .harness import Kernel
from .private_backend import private_env, private_service

StartKernel = Callable[..., Kernel]

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


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
    info_id = kernel.kc.kernel_info()  # waits behind the cell in the remote kernel
    service.send_signal(signal.SIGKILL)
    reply, outputs = kernel.collect(msg_id, timeout=90)
    assert reply["ename"] == "SandboxLost", reply
    assert "stopped" in reply["evalue"] and "gone" in reply["evalue"]
    assert "still running" not in reply["evalue"]
    assert [o.msg_type for o in outputs] == ["error"]
    # As python3's: a full kernel_info_reply (jupyter_client's wait_for_ready needs its
    # protocol_version), never an error.
    info = kernel.reply(info_id)
    assert info["status"] == "ok" and info["protocol_version"].startswith("5."), info
    # A front end's kernel_info between the loss and the next cell (JupyterLab asks on
    # reconnecting; in CI one sent just before the kill came after it) must not take the new
    # sandbox's notice: nothing shows it.
    assert kernel.reply(kernel.kc.kernel_info(), timeout=180)["status"] == "ok"

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
    # Requests that are not cells leave the loss for the next cell to tell.
    assert kernel.reply(kernel.kc.kernel_info(), timeout=120)["status"] == "ok"
    kernel.reply(kernel.kc.complete("lost_"), timeout=120)
    reply, outputs = kernel.run("lost_value", timeout=120)
    assert reply["ename"] == "SandboxLost", (reply, outputs)
    assert "still running" not in reply["evalue"]
    reply, outputs = kernel.run("1", timeout=180)
    assert reply["status"] == "ok"
    notices = [o for o in outputs if o.msg_type == "stream"]
    assert len(notices) == 1 and "NEW sandbox" in notices[0].content["text"], outputs
