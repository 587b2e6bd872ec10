"""The warm pool: sandboxes served from it are as fresh as cold ones and leak nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from e2b_code_interpreter import AsyncSandbox, Sandbox
from local_helpers import host_pids_with, marker, sdk_options, wait_for

from e2b_kernel.local import RunningService, start_subprocess


@pytest.fixture(scope="module")
def pooled() -> Iterator[RunningService]:
    """A service of its own with a pool of two, so consecutive creates come from it."""
    service = start_subprocess(pool_size=2)
    try:
        yield service
    finally:
        service.stop()


def test_two_pooled_sandboxes_share_no_state(pooled: RunningService) -> None:
    opts = sdk_options(pooled)
    tag = marker()
    first = Sandbox.create(timeout=120, envs={"FIRST_ONLY": "one"}, **opts)
    try:
        assert first.run_code("import os; os.getenv('FIRST_ONLY')").text == "one"
        assert first.commands.run("echo $FIRST_ONLY").stdout.strip() == "one"
        first.run_code("leaked_global = 'first'")
        first.files.write("/home/user/first.txt", "mine")
        first.files.write("/tmp/first-tmp.txt", "mine")
        first.commands.run(f"exec -a {tag} sleep 600", background=True, timeout=0)
        wait_for(lambda: bool(host_pids_with(tag)), what="the marked process")

        second = Sandbox.create(timeout=120, envs={"SECOND": "two"}, **opts)
        try:
            assert second.sandbox_id != first.sandbox_id
            env = second.run_code("import os; os.getenv('SECOND')")
            # A pooled kernel is at a clean count: the first user cell is number 1.
            assert env.text == "two" and env.execution_count == 1
            assert second.run_code("import os; os.getenv('FIRST_ONLY')").text is None
            assert second.commands.run("echo ${FIRST_ONLY:-unset}").stdout.strip() == "unset"
            error = second.run_code("leaked_global").error
            assert error is not None and error.name == "NameError"
            assert not second.files.exists("/home/user/first.txt")
            assert not second.files.exists("/tmp/first-tmp.txt")
            assert tag not in second.commands.run("ps -eo args").stdout
            home = sorted(e.name for e in second.files.list("/home/user"))
            assert "first.txt" not in home
        finally:
            second.kill()
    finally:
        first.kill()


def test_pooled_sandbox_env_vars_async_and_per_call(pooled: RunningService) -> None:
    async def scenario() -> None:
        sbx = await AsyncSandbox.create(timeout=60, envs={"FOO": "global"}, **sdk_options(pooled))
        try:
            assert (await sbx.run_code("import os; os.environ['FOO']")).text == "global"
            call = await sbx.run_code("import os; os.environ['FOO']", envs={"FOO": "call"})
            assert call.text == "global" or call.text == "call"
            assert (await sbx.run_code("import os; os.environ['FOO']")).text == "global"
        finally:
            await sbx.kill()

    asyncio.run(scenario())


def test_pool_size_zero_still_creates() -> None:
    service = start_subprocess(pool_size=0)
    try:
        sbx = Sandbox.create(timeout=60, envs={"A": "b"}, **sdk_options(service))
        try:
            assert sbx.run_code("import os; os.getenv('A')").text == "b"
        finally:
            sbx.kill()
    finally:
        service.stop()
