"""What ``e2b-kernel local`` prints on stderr while sandboxes are used and killed.

Killing a sandbox while its command streams or its cell runs is ordinary use (the SDK's
``kill``, a timeout), and the service breaks those responses off on purpose, as E2B's proxy
does. Its log said so with an ERROR and a traceback from our internals (``/execute``) or
uvicorn's "ASGI callable returned without completing response." (a command's stream).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2b import CommandExitException, TimeoutException
from e2b_code_interpreter import OutputMessage, Sandbox

from e2b_kernel.local import read_banner

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def service_with_log(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    """``e2b-kernel local`` at its default log level, its stderr kept in a file."""
    log = tmp_path / "service.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "e2b_kernel.cli", "local", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        assert proc.stdout is not None
        banner = read_banner(proc.stdout)
        assert "isolation" in banner, log.read_text()
        yield banner, log
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _kill_on(sandbox: Sandbox, started: threading.Event) -> threading.Thread:
    def kill() -> None:
        if started.wait(60):
            sandbox.kill()

    killer = threading.Thread(target=kill)
    killer.start()
    return killer


def test_sandboxes_killed_mid_stream_log_no_error(
    service_with_log: tuple[dict[str, str], Path],
) -> None:
    banner, log = service_with_log
    options = {
        "api_key": banner["E2B_API_KEY"],
        "api_url": banner["E2B_API_URL"],
        "sandbox_url": banner["E2B_SANDBOX_URL"],
    }
    # A cell running when its sandbox is killed.
    sandbox = Sandbox.create(timeout=120, **options)
    started = threading.Event()

    def on_stdout(message: OutputMessage) -> None:
        if "started" in message.line:
            started.set()

    killer = _kill_on(sandbox, started)
    try:
        with pytest.raises(TimeoutException, match="killed while the request was in progress"):
            sandbox.run_code("import time\nprint('started')\ntime.sleep(120)", on_stdout=on_stdout)
    finally:
        started.set()
        killer.join()
    # A command streaming when its sandbox is killed.
    sandbox = Sandbox.create(timeout=120, **options)
    started = threading.Event()
    killer = _kill_on(sandbox, started)
    try:
        with pytest.raises((CommandExitException, TimeoutException)):
            sandbox.commands.run(
                "echo started; sleep 120", on_stdout=lambda line: started.set(), timeout=0
            )
    finally:
        started.set()
        killer.join()
    # Both streams were broken off on purpose; the log says what happened, not that it failed.
    logged = log.read_text()
    assert "Traceback" not in logged, logged
    assert "uvicorn.error" not in logged, logged  # "ASGI callable returned without completing"
