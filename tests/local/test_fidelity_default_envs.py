"""E2B's default environment variables ("Default environment variables" in E2B's docs):
E2B_SANDBOX, E2B_SANDBOX_ID, E2B_TEAM_ID and E2B_TEMPLATE_ID in commands and in the code
interpreter, and as dot files in /run/e2b, in pooled sandboxes and in cold-started ones."""

from __future__ import annotations

import asyncio

import pytest
from e2b_code_interpreter import AsyncSandbox, Sandbox

from e2b_kernel.local.sandbox.runtime import LOCAL_TEAM_ID

pytestmark = pytest.mark.usefixtures("sdk_env")

NAMES = ("E2B_SANDBOX", "E2B_SANDBOX_ID", "E2B_TEAM_ID", "E2B_TEMPLATE_ID")
SHOW_FILES = "for n in " + " ".join(NAMES) + '; do printf "%s=%s\\n" $n "$(cat /run/e2b/.$n)"; done'


def _expected(sandbox_id: str, template: str) -> dict[str, str]:
    return {
        "E2B_SANDBOX": "true",
        "E2B_SANDBOX_ID": sandbox_id,
        "E2B_TEAM_ID": LOCAL_TEAM_ID,
        "E2B_TEMPLATE_ID": template,
    }


def _pairs(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line.startswith("E2B_"))


# Pooled (the default disk) and cold-started (a disk of its own is never pooled).
@pytest.mark.parametrize("metadata", [{}, {"e2b.disk_mb": "256"}], ids=["pooled", "cold"])
def test_default_env_vars_in_commands_code_and_run_files(metadata: dict[str, str]) -> None:
    sbx = Sandbox.create(timeout=120, metadata=metadata, envs={"MINE": "1"})
    try:
        expected = _expected(sbx.sandbox_id, "code-interpreter-v1")
        assert _pairs(sbx.commands.run("env").stdout) == expected
        assert _pairs(sbx.commands.run(SHOW_FILES).stdout) == expected
        code = "import os\nprint({k: v for k, v in os.environ.items() if k.startswith('E2B_')})"
        assert sbx.run_code(code).logs.stdout == [f"{expected}\n"]
        # A restarted context gets them too (the server's kernels start from its environment).
        context = sbx.create_code_context()
        sbx.restart_code_context(context)
        assert sbx.run_code(code, context=context).logs.stdout == [f"{expected}\n"]
        # Nothing of them leaks the service's own secrets.
        assert "E2B_API_KEY" not in sbx.commands.run("env").stdout
    finally:
        sbx.kill()


def test_the_template_id_is_the_one_asked_for_async() -> None:
    async def scenario() -> None:
        sbx = await AsyncSandbox.create("base", timeout=120)
        try:
            shown = (await sbx.commands.run("echo $E2B_TEMPLATE_ID $E2B_SANDBOX_ID")).stdout
            assert shown == f"base {sbx.sandbox_id}\n"
        finally:
            await sbx.kill()

    asyncio.run(scenario())
