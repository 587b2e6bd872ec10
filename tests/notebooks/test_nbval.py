"""nbval on the E2B Python kernel: failures really fail, stuck cells are interrupted, and the
example notebooks pass in parallel, each in its own sandbox, leaving none behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def run_pytest(*args: str, timeout: float, marker: str = "") -> subprocess.CompletedProcess[str]:
    """Run a nested pytest on the local backend (no key), with this repo's pytest config."""
    env = {k: v for k, v in os.environ.items() if k != "E2B_API_KEY"}
    env["E2B_KERNEL_BACKEND"] = "local"
    env["E2B_KERNEL_TEST_RUN"] = marker  # inherited by the kernels, to find their sandboxes
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _first_failures(output: str) -> str:
    """A failed run's report from its first failure on (the later cells of a notebook often
    fail only because an earlier one did), within 8,000 characters."""
    start = output.find("\n___")
    return output[start : start + 8000] if start >= 0 else output[-8000:]


def leaked_sandboxes(run_marker: str) -> list[int]:
    """Host pids of bubblewrap sandboxes that outlived their run.

    A sandbox leaks when the service that owns it (the ``svc-<pid>`` in its bind mounts) is
    gone, or when that service still lives in a kernel started by the run tagged with
    ``run_marker``. Sandboxes of other, still running test workers are left alone.
    """
    leaked = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0].endswith(b"bwrap") or b"/home/user" not in argv:
            continue
        owner = re.search(rb"/svc-(\d+)-", b" ".join(argv))
        if owner is None:
            continue
        try:
            environ = Path(f"/proc/{int(owner.group(1))}/environ").read_bytes()
        except OSError:
            leaked.append(int(proc.name))  # its service is dead: an orphan
            continue
        if f"E2B_KERNEL_TEST_RUN={run_marker}".encode() in environ.split(b"\0"):
            leaked.append(int(proc.name))
    return leaked


def wait_until_no_leaks(run_marker: str, seconds: float = 20) -> list[int]:
    """Sandboxes die just after their kernel: give the kernel a bounded moment to reap them."""
    deadline = time.monotonic() + seconds
    while (leaked := leaked_sandboxes(run_marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return leaked


@pytest.mark.timeout(240)
def test_unexpected_remote_error_fails_nbval() -> None:
    done = run_pytest("--nbval", str(HERE / "broken.ipynb"), timeout=200)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed, 1 passed" in done.stdout
    assert "ZeroDivisionError" in done.stdout


@pytest.mark.timeout(240)
def test_cell_timeout_interrupts_stuck_cell() -> None:
    began = time.monotonic()
    done = run_pytest(
        "--nbval-lax", "--nbval-cell-timeout=5", str(HERE / "stuck.ipynb"), timeout=200
    )
    elapsed = time.monotonic() - began
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Timeout of 5 seconds exceeded" in done.stdout
    # The sleep(600) was interrupted: the run ended long before the cell would have.
    assert elapsed < 180, f"nbval took {elapsed:.0f} s"


@pytest.mark.timeout(600)
def test_example_notebooks_pass_in_parallel_and_leave_no_sandbox() -> None:
    marker = uuid.uuid4().hex
    done = run_pytest("-n", "4", "--nbval", "notebooks/", timeout=560, marker=marker)
    assert done.returncode == 0, _first_failures(done.stdout) + done.stderr[-2000:]
    assert " failed" not in done.stdout
    leftover = wait_until_no_leaks(marker)
    assert not leftover, f"sandboxes left running: {sorted(leftover)}"
