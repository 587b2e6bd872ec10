"""Packages installed in a sandbox land in its writable home and survive a kernel restart."""

from __future__ import annotations

import pytest
from e2b_code_interpreter import Sandbox
from wheels import tiny_wheel


@pytest.mark.timeout(180)
def test_pip_install_imports_at_once_and_survives_a_context_restart(sdk_env) -> None:
    name, wheel = tiny_wheel("tinypkg", value=42)
    sandbox = Sandbox.create(timeout=120)
    try:
        sandbox.files.write(f"/home/user/{name}", wheel)
        installed = sandbox.run_code(f"%pip install --no-index /home/user/{name}")
        assert installed.error is None
        assert "Successfully installed tinypkg-1.0" in "".join(installed.logs.stdout)
        # Importable in the running kernel, without a restart.
        assert sandbox.run_code("import tinypkg; tinypkg.VALUE").text == "42"

        context = sandbox.create_code_context()
        sandbox.run_code("import tinypkg; before = tinypkg.VALUE", context=context)
        sandbox.restart_code_context(context)
        after = sandbox.run_code(
            "import tinypkg; (tinypkg.VALUE, 'before' in dir())", context=context
        )
        assert after.text == "(42, False)"  # the package survived, the Python state did not

        # Login shells of commands.run see the same Python and packages.
        shell = sandbox.commands.run("python -c 'import tinypkg; print(tinypkg.__file__)'")
        assert shell.stdout.strip().startswith("/home/user/.local/lib/python")
        # The service's own environment stays read-only.
        denied = sandbox.run_code(
            "import os, sys; os.access(os.path.dirname(os.__file__), os.W_OK)"
        )
        assert denied.text == "False"
    finally:
        sandbox.kill()
