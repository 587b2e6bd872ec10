"""examples/refine_loop.py runs offline (no E2B key: private local service) and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "refine_loop.py"


@pytest.mark.timeout(180)
def test_refine_loop_retries_with_feedback_until_success(tmp_path: Path) -> None:
    sdk_names = (
        "E2B_API_KEY",
        "E2B_API_URL",
        "E2B_SANDBOX_URL",
        "E2B_DOMAIN",
        "E2B_KERNEL_BACKEND",
    )
    env = {k: v for k, v in os.environ.items() if k not in sdk_names}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("round")] == [
        "round 1",
        "round 2",
        "round 3",
    ]
    feedback = [line for line in lines if "feedback for the generator" in line]
    assert len(feedback) == 2 and all("AssertionError" in line for line in feedback)
    assert "all checks passed" in lines[-1]
