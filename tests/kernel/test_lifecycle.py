"""Lifecycle of the kernel's sandbox: interrupts, timeouts, restart, shutdown, loss, keep-alive."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from queue import Empty
from typing import Any

import pytest
from wheels import tiny_wheel

from e2b_kernel.local import RunningService

from . import sandboxes
from .conftest import TRANSPORTS, with_transport
from .harness import Kernel

pytestmark = pytest.mark.timeout(300)

StartKernel = Callable[..., Kernel]
BackendEnv = Callable[..., dict[str, str]]
# Every lifecycle behaviour runs on both transports; the shared service (used as "cloud") runs
# on the jupyter transport only where a test is parametrized over backends, to keep the time.
ON_BOTH_TRANSPORTS = pytest.mark.parametrize("transport", TRANSPORTS, indirect=True)
BACKEND_TRANSPORTS = pytest.mark.parametrize(
    ("backend_env", "transport"),
    [("private-local", "execute"), ("private-local", "jupyter"), ("service", "jupyter")],
    indirect=True,
)


def start_tagged_kernel(
    start_kernel: StartKernel, local_service: RunningService, transport: str, **overrides: str
) -> tuple[Kernel, str]:
    """A kernel on the shared service (used as "cloud") whose sandboxes carry a fresh tag."""
    tag = sandboxes.new_tag()
    env = {**local_service.sdk_env(), "E2B_KERNEL_BACKEND": "cloud"}
    env = backends_env(env, E2B_KERNEL_METADATA=f"test={tag}", **overrides)
    return start_kernel(with_transport(env, transport)), tag


@BACKEND_TRANSPORTS
@pytest.mark.parametrize("mode", ["signal", "message"])
@pytest.mark.parametrize("loop", ["while True:\n    pass", "time.sleep(1000)"])
def test_interrupt_stops_the_cell_and_keeps_state(
    start_kernel: StartKernel, backend_env: BackendEnv, mode: str, loop: str
) -> None:
    kernel = start_kernel(backend_env(), interrupt_mode=mode)
    assert kernel.value("kept = 7\nkept") == "7"
    msg_id = kernel.send(f"import time\nprint('started', flush=True)\n{loop}")
    kernel.wait_for_stream(msg_id, "started")
    started = time.monotonic()
    kernel.km.interrupt_kernel()
    reply, outputs = kernel.collect(msg_id, timeout=30)  # until idle: then nothing is aborted
    elapsed = time.monotonic() - started
    assert reply["status"] == "error", (reply, outputs)
    assert reply["ename"] == "KeyboardInterrupt", (reply, outputs)
    # The remote loop really stopped: the same context answers the next cell.
    assert kernel.value("kept") == "7"
    stopped = time.monotonic() - started
    print(f"interrupt ({mode}): reply after {elapsed:.2f} s, next cell done after {stopped:.2f} s")
    # Promptly, not by a timeout. The "within 1 s" is measured by bench/kernel.py
    # (45 ms on jupyter, python3 32 ms, on an idle 2-core VM): a timed assertion at 1 s failed
    # once at 1.04 s, with the suite's other worker and this cell's busy loop on both cores.
    assert elapsed < 8.0, f"the interrupted cell ended after {elapsed:.2f} s"
    assert kernel.km.is_alive()


@ON_BOTH_TRANSPORTS
def test_cell_timeout_fails_clearly_and_keeps_the_sandbox(
    start_kernel: StartKernel, backend_env: BackendEnv
) -> None:
    kernel = start_kernel(backend_env(E2B_KERNEL_CELL_TIMEOUT="2"))
    kernel.run("before = 5")
    reply, outputs = kernel.run("import time\ntime.sleep(60)")
    assert reply["status"] == "error"
    assert reply["ename"] == "ExecutionTimeout"
    assert [o.msg_type for o in outputs] == ["error"]
    assert "2 s" in outputs[0].content["evalue"]
    assert kernel.value("before") == "5"


@ON_BOTH_TRANSPORTS
def test_a_cell_that_catches_its_timeouts_interrupt_is_stopped_all_the_same(
    start_kernel: StartKernel, backend_env: BackendEnv
) -> None:
    """A retry loop with a bare ``except`` ran on for ever: no error, no reply, and every
    later cell waited behind it. Past a grace period its Python is restarted."""
    kernel = start_kernel(backend_env(E2B_KERNEL_CELL_TIMEOUT="2"))
    kernel.run("open('kept.txt', 'w').write('kept')\nbefore = 5")
    code = "import time\nwhile True:\n    try:\n        time.sleep(0.2)\n    except:\n        pass"
    reply, outputs = kernel.run(code, timeout=90)
    assert reply["ename"] == "ExecutionTimeout", reply
    assert [o.msg_type for o in outputs] == ["error"], outputs
    assert "did not stop when interrupted" in outputs[0].content["evalue"]
    assert "restarted" in outputs[0].content["evalue"]
    assert kernel.value("open('kept.txt').read()") == "'kept'"  # the sandbox is the same
    reply, _ = kernel.run("before")
    assert reply["ename"] == "NameError"


@ON_BOTH_TRANSPORTS
def test_a_cell_that_finishes_after_its_timeouts_interrupt_still_fails(
    start_kernel: StartKernel, backend_env: BackendEnv, transport: str
) -> None:
    """It caught the interrupt, cleaned up and ended normally: past its deadline, it fails
    (it ended ``ok``, as if no timeout were set), and its state is kept."""
    kernel = start_kernel(backend_env(E2B_KERNEL_CELL_TIMEOUT="2"))
    code = (
        "import time\ntry:\n    time.sleep(30)\nexcept KeyboardInterrupt:\n"
        "    print('cleanup ran')\ncleaned = True\n'value'"
    )
    reply, outputs = kernel.run(code, timeout=60)
    assert reply["status"] == "error" and reply["ename"] == "ExecutionTimeout", reply
    assert [o.msg_type for o in outputs][-1] == "error"
    if transport == "jupyter":  # the execute protocol ends the cell's stream at the deadline
        assert [o.content.get("text") for o in outputs[:1]] == ["cleanup ran\n"]
    assert kernel.value("cleaned") == "True"


@BACKEND_TRANSPORTS
def test_restart_gives_fresh_state_and_keeps_files(
    start_kernel: StartKernel, backend_env: BackendEnv
) -> None:
    kernel = start_kernel(backend_env())
    reply, _ = kernel.run("open('kept.txt', 'w').write('still here')\nvariable = 1")
    assert reply["status"] == "ok"
    wheel_name, wheel = tiny_wheel("keptpkg", value=7)
    encoded = base64.b64encode(wheel).decode()
    kernel.run(f"import base64\nopen({wheel_name!r}, 'wb').write(base64.b64decode({encoded!r}))")
    reply, _ = kernel.run(f"%pip install --no-index {wheel_name}")
    assert reply["status"] == "ok"
    kernel.km.restart_kernel(now=False)
    kernel.kc.wait_for_ready(timeout=60)
    assert kernel.value("open('kept.txt').read()") == "'still here'"  # quoted, as on python3
    assert kernel.value("import keptpkg; keptpkg.VALUE") == "7"  # installed packages survive
    reply, outputs = kernel.run("variable")
    assert reply["ename"] == "NameError"
    assert [o.msg_type for o in outputs] == ["error"]


@ON_BOTH_TRANSPORTS
def test_shutdown_kills_the_sandbox(
    start_kernel: StartKernel, local_service: RunningService, transport: str
) -> None:
    kernel, tag = start_tagged_kernel(start_kernel, local_service, transport)
    kernel.run("1")
    assert len(sandboxes.running_ids(local_service, tag)) == 1
    kernel.shutdown()
    assert sandboxes.wait_for_count(local_service, tag, 0, timeout=20) == []


def _already_received(channel: Any) -> list[dict[str, Any]]:
    """What the channel holds now (its get_msgs() waits for ever once there is nothing)."""
    held = []
    while True:
        try:
            held.append(channel.get_msg(timeout=0.2))
        except Empty:
            return held


@ON_BOTH_TRANSPORTS
def test_shutdown_while_a_cell_runs_answers_as_python3_does(
    start_kernel: StartKernel, backend_env: BackendEnv
) -> None:
    """python3 answers shutdown_request at once and sends nothing more for the cell it was
    running. The relay first waited for that cell (2 s) and then ended it with a made-up
    KeyboardInterrupt error and an execute_reply of execution count 0."""
    kernel = start_kernel(backend_env())
    running = kernel.send("import time\nprint('started')\nfor _ in range(400): time.sleep(0.25)")
    kernel.wait_for_stream(running, "started")
    kernel.kc.control_channel.send(kernel.kc.session.msg("shutdown_request", {"restart": False}))
    answer = kernel.kc.control_channel.get_msg(timeout=30)
    assert answer["msg_type"] == "shutdown_reply"
    about_the_cell = [
        m["msg_type"]
        for channel in (kernel.kc.iopub_channel, kernel.kc.shell_channel)
        for m in _already_received(channel)
        if m["parent_header"].get("msg_id") == running
    ]
    assert "error" not in about_the_cell and "execute_reply" not in about_the_cell
    kernel.close()


@ON_BOTH_TRANSPORTS
def test_private_backend_shutdown_leaves_no_process(
    start_kernel: StartKernel, backend_env: BackendEnv
) -> None:
    import psutil

    kernel = start_kernel(backend_env())
    kernel.run("1")
    descendants = psutil.Process(kernel.pid).children(recursive=True)
    assert descendants, "expected the local service helper and the sandbox processes"
    kernel.shutdown()
    _, alive = psutil.wait_procs(descendants, timeout=30)
    assert alive == []


@ON_BOTH_TRANSPORTS
def test_keepalive_across_idle_longer_than_the_sandbox_timeout(
    start_kernel: StartKernel, local_service: RunningService, transport: str
) -> None:
    # 6 s, not less: the sandbox is created as the kernel process starts, and its first
    # refresh comes only after the kernel's imports and a third of the timeout (about 2.2 s
    # on an idle machine: 4 s left too little room on a loaded one).
    kernel, tag = start_tagged_kernel(
        start_kernel, local_service, transport, E2B_KERNEL_SANDBOX_TIMEOUT="6"
    )
    kernel.run("state = 'alive'")
    (sandbox_id,) = sandboxes.running_ids(local_service, tag)
    # The idle period under test: past the 6 s timeout by more than a refresh interval (2 s).
    time.sleep(9)
    assert kernel.value("state") in {"alive", "'alive'"}  # E2B strips one pair of quotes
    assert sandboxes.running_ids(local_service, tag) == [sandbox_id]
    # Busy for longer than the timeout is fine too.
    reply, _ = kernel.run("import time\ntime.sleep(9)\nstate")
    assert reply["status"] == "ok"


@ON_BOTH_TRANSPORTS
def test_sandbox_killed_during_a_cell(
    start_kernel: StartKernel, local_service: RunningService, transport: str
) -> None:
    kernel, tag = start_tagged_kernel(start_kernel, local_service, transport)
    kernel.run("lost_value = 1")
    (sandbox_id,) = sandboxes.running_ids(local_service, tag)
    msg_id = kernel.send("import time\nprint('started', flush=True)\ntime.sleep(120)")
    kernel.wait_for_stream(msg_id, "started")
    sandboxes.kill(local_service, sandbox_id)
    reply, outputs = kernel.collect(msg_id, timeout=60)
    assert reply["status"] == "error"
    assert reply["ename"] == "SandboxLost"
    assert [o.msg_type for o in outputs] == ["error"]
    assert "state" in reply["evalue"] and "gone" in reply["evalue"]
    assert_new_sandbox_said_once(kernel)


@pytest.mark.parametrize("transport", ["jupyter"], indirect=True)
def test_a_sandbox_killed_right_after_its_kernel_died_is_lost_not_a_dead_kernel(
    start_kernel: StartKernel, local_service: RunningService, transport: str
) -> None:
    """A killed sandbox's kernel may die a moment before its Jupyter Server, which then still
    reports the death ('restarting'): the cell must end as lost with its sandbox, not as
    KernelDied with a new sandbox unannounced (seen once in CI). Here the kernel dies first
    for sure, and the sandbox is killed once the server has said so."""
    kernel, tag = start_tagged_kernel(start_kernel, local_service, transport)
    kernel.run("lost_value = 1")
    (sandbox_id,) = sandboxes.running_ids(local_service, tag)
    msg_id = kernel.send("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    kernel.wait_for_kernel_status("restarting")
    sandboxes.kill(local_service, sandbox_id)
    reply, outputs = kernel.collect(msg_id, timeout=60)
    assert reply["status"] == "error"
    assert reply["ename"] == "SandboxLost", outputs
    assert_new_sandbox_said_once(kernel)


@ON_BOTH_TRANSPORTS
def test_sandbox_expiry_between_cells(
    start_kernel: StartKernel, local_service: RunningService, transport: str
) -> None:
    kernel, tag = start_tagged_kernel(start_kernel, local_service, transport)
    kernel.run("lost_value = 1")
    (sandbox_id,) = sandboxes.running_ids(local_service, tag)
    sandboxes.set_timeout(local_service, sandbox_id, 1)
    assert sandboxes.wait_for_count(local_service, tag, 0, timeout=30) == []
    reply, outputs = kernel.run("lost_value")
    assert reply["ename"] == "SandboxLost"
    assert [o.msg_type for o in outputs] == ["error"]
    assert "gone" in reply["evalue"]
    assert_new_sandbox_said_once(kernel)


def assert_new_sandbox_said_once(kernel: Kernel) -> None:
    reply, outputs = kernel.run("'lost_value' in globals()")
    assert reply["status"] == "ok", outputs
    notices = [o for o in outputs if o.msg_type == "stream"]
    assert len(notices) == 1 and "NEW sandbox" in notices[0].content["text"]
    assert outputs[-1].content["data"]["text/plain"] == "False"
    _, outputs = kernel.run("1")
    assert [o.msg_type for o in outputs] == ["execute_result"]


def test_missing_key_in_cloud_mode_is_one_clear_error(
    start_kernel: StartKernel, backend_env: BackendEnv
) -> None:
    kernel = start_kernel(backend_env(E2B_KERNEL_BACKEND="cloud"))
    for _ in range(2):
        reply, outputs = kernel.run("1 + 1")
        assert reply["status"] == "error"
        assert [o.msg_type for o in outputs] == ["error"]
        assert reply["ename"] == "ConfigurationError"
        assert "E2B_API_KEY" in reply["evalue"]
        assert len(reply["traceback"]) == 1
        assert "File " not in reply["traceback"][0]


def test_unreachable_service_is_one_clear_error(
    start_kernel: StartKernel, backend_env: BackendEnv
) -> None:
    url = "http://127.0.0.1:9"  # the discard port: nothing listens there
    env = backend_env(
        E2B_KERNEL_BACKEND="cloud",
        E2B_API_KEY="test-key",
        E2B_API_URL=url,
        E2B_SANDBOX_URL=url,
        E2B_CONNECTION_RETRIES="0",
    )
    kernel = start_kernel(env)
    reply, outputs = kernel.run("1 + 1", timeout=180)
    assert reply["ename"] == "SandboxUnavailable"
    assert [o.msg_type for o in outputs] == ["error"]
    assert url in reply["evalue"] or "E2B_API_URL" in reply["evalue"]
    assert "test-key" not in str(reply)


def backends_env(base: dict[str, str], **overrides: str) -> dict[str, str]:
    from .harness import clean_env

    return {**clean_env(), **base, **overrides}


@ON_BOTH_TRANSPORTS
def test_idle_pause_mode_resumes_with_state(
    start_kernel: StartKernel, local_service: RunningService, transport: str
) -> None:
    kernel, tag = start_tagged_kernel(
        start_kernel,
        local_service,
        transport,
        E2B_KERNEL_IDLE="pause",
        E2B_KERNEL_SANDBOX_TIMEOUT="3",
    )
    kernel.run("paused_value = 'kept'")
    # On a loaded machine its 3 s may be over already: paused counts too.
    (sandbox_id,) = sandboxes.running_ids(local_service, tag, paused_too=True)
    assert sandboxes.wait_for_state(local_service, sandbox_id, "paused") == "paused"
    # The cell resumes it, and keeps it busy while its state is read: idle again, it would
    # pause 3 s after the resume, maybe before the first look.
    cell = kernel.send("print(paused_value, flush=True)\nimport time\ntime.sleep(5)")
    kernel.wait_for_stream(cell, "kept")
    assert sandboxes.wait_for_state(local_service, sandbox_id, "running", 5) == "running"
    assert kernel.collect(cell)[0]["status"] == "ok"


@ON_BOTH_TRANSPORTS
@pytest.mark.parametrize("mode", ["signal", "message"])
def test_interrupt_while_idle_is_harmless(
    start_kernel: StartKernel, backend_env: BackendEnv, mode: str
) -> None:
    kernel = start_kernel(backend_env(), interrupt_mode=mode)
    assert kernel.value("kept = 3\nkept") == "3"
    for _ in range(3):
        kernel.km.interrupt_kernel()
        reply = kernel.kc.complete("ke", 2, reply=True, timeout=60)["content"]
        assert reply["status"] == "ok"
    assert kernel.value("kept") == "3"
    assert kernel.km.is_alive()


def test_invalid_key_is_one_clear_error_without_the_key(
    start_kernel: StartKernel, backend_env: BackendEnv
) -> None:
    from e2b_kernel.local import start_subprocess

    service = start_subprocess(api_key="the-right-key")
    try:
        overrides = {**service.sdk_env(), "E2B_API_KEY": "a-wrong-key"}
        env = backend_env(E2B_KERNEL_BACKEND="cloud", **overrides)
        kernel = start_kernel(env)
        reply, outputs = kernel.run("1 + 1", timeout=120)
        assert reply["ename"] == "SandboxUnavailable"
        assert [o.msg_type for o in outputs] == ["error"]
        assert "E2B_API_KEY" in reply["evalue"]
        assert "a-wrong-key" not in str(reply) and "the-right-key" not in str(reply)
        assert len(reply["traceback"]) == 1
    finally:
        service.stop()


def test_keep_sandbox_keeps_it_at_shutdown(
    start_kernel: StartKernel, local_service: RunningService, transport: str
) -> None:
    kernel, tag = start_tagged_kernel(
        start_kernel, local_service, transport, E2B_KERNEL_KEEP_SANDBOX="1"
    )
    kernel.run("1")
    (sandbox_id,) = sandboxes.running_ids(local_service, tag)
    kernel.shutdown()
    try:
        assert sandboxes.running_ids(local_service, tag) == [sandbox_id]
    finally:
        sandboxes.kill(local_service, sandbox_id)


def test_bad_configuration_is_shown_on_every_cell_and_the_kernel_lives(
    start_kernel: StartKernel, backend_env: BackendEnv
) -> None:
    kernel = start_kernel(backend_env(E2B_KERNEL_SANDBOX_TIMEOUT="soon"))
    assert "E2B_KERNEL_SANDBOX_TIMEOUT" in kernel.banner()
    for _ in range(2):
        reply, outputs = kernel.run("1")
        assert reply["ename"] == "ConfigurationError"
        assert "E2B_KERNEL_SANDBOX_TIMEOUT" in reply["evalue"]
        assert [o.msg_type for o in outputs] == ["error"]
    assert kernel.kc.complete("x", 1, reply=True, timeout=30)["content"]["matches"] == []


@ON_BOTH_TRANSPORTS
def test_secrets_reach_neither_the_sandbox_nor_the_front_end(
    start_kernel: StartKernel, local_service: RunningService, transport: str
) -> None:
    kernel, _ = start_tagged_kernel(start_kernel, local_service, transport)
    key = local_service.api_key
    banner = kernel.banner()
    assert f"Transport: {transport}" in banner
    reply, outputs = kernel.run(
        "import os\n"
        f"print(sorted(k for k, v in os.environ.items() if {key!r} in v))\n"
        "print(sorted(k for k in os.environ if 'TRAFFIC' in k.upper()))"
    )
    assert reply["status"] == "ok", outputs
    printed = "".join(o.content["text"] for o in outputs if o.msg_type == "stream")
    assert printed == "[]\n[]\n", outputs
    assert key not in banner and key not in str(reply)
