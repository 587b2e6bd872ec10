"""Fixtures for the magic tests: an IPython shell with the extension, talking to the local
service through the unmodified SDK (the service's URLs and key in the environment)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest
from IPython.core.interactiveshell import InteractiveShell


def list_running_sandboxes(sdk_env: dict[str, str]) -> set[str]:
    """Ids of the running sandboxes the service reports, through the SDK's Sandbox.list()."""
    from e2b_code_interpreter import AsyncSandbox

    async def fetch() -> set[str]:
        paginator = AsyncSandbox.list(
            api_key=sdk_env["E2B_API_KEY"], api_url=sdk_env["E2B_API_URL"]
        )
        ids: set[str] = set()
        while paginator.has_next:
            ids.update(info.sandbox_id for info in await paginator.next_items())
        return ids

    return asyncio.run(fetch())


@pytest.fixture
def running_sandbox_ids(sdk_env: dict[str, str]) -> Callable[[], set[str]]:
    """A function returning the ids of the sandboxes running on the local service now."""
    return lambda: list_running_sandboxes(sdk_env)


@pytest.fixture
def shell(sdk_env: dict[str, str]) -> Iterator[InteractiveShell]:
    """InteractiveShell with ``%load_ext e2b_kernel``; unloading kills its sandboxes."""
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "e2b_kernel")
    try:
        yield ip
    finally:
        ip.run_line_magic("unload_ext", "e2b_kernel")
