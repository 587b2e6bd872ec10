"""nbval on the E2B Python kernel: failures really fail, stuck cells are interrupted, and the
example notebooks pass in parallel, each in its own sandbox, leaving none behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def run_pytest(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a nested pytest on the local backend (no key), outside this suite's rootdir config."""
    env = {k: v for k, v in os.environ.items() if k != "E2B_API_KEY"}
    env["E2B_KERNEL_BACKEND"] = "local"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sandbox_processes() -> set[int]:
    """Host pids of bubblewrap sandboxes started by any local service on this machine."""
    pids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"bwrap") and b"/home/user" in argv:
            pids.add(int(proc.name))
    return pids


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
    before = sandbox_processes()
    done = run_pytest("-n", "4", "--nbval", "notebooks/", timeout=560)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    assert " failed" not in done.stdout
    leftover = sandbox_processes() - before
    assert not leftover, f"sandboxes left running: {sorted(leftover)}"
