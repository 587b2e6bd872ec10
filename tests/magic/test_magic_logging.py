"""An internal error in ``%%e2b`` shows one line, never our stack, even with logging unset."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

# A fresh interpreter: pytest configures logging, which would hide the last-resort handler.
_SCRIPT = textwrap.dedent(
    """
    from IPython.testing.globalipapp import start_ipython
    from e2b_kernel.core import SandboxSession

    async def broken_start(self):
        raise RuntimeError("internal bug")

    SandboxSession.start = broken_start
    ip = start_ipython()
    ip.run_line_magic("load_ext", "e2b_kernel")
    ip.run_cell("%%e2b\\nprint(1)\\n")
    """
)


def test_internal_error_shows_one_line_and_no_stack(tmp_path: Path) -> None:
    script = tmp_path / "probe.py"
    script.write_text(_SCRIPT)
    env = {**os.environ, "E2B_KERNEL_BACKEND": "local", "IPYTHONDIR": str(tmp_path / "ipy")}
    env.pop("E2B_API_KEY", None)
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, done.stderr
    shown = done.stdout + done.stderr
    assert "RuntimeError" in shown and "internal bug" in shown
    assert "Traceback" not in shown
    assert "magics.py" not in shown
