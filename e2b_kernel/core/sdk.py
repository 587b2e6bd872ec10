"""The E2B SDK's sandbox class, imported when first needed instead of with the package.

Importing ``e2b_code_interpreter`` (and with it ``e2b``) takes about 0.3 s on a 2-core VM,
longer than a ``python3`` kernel takes to answer its first request. The kernel no longer pays
it before it can launch its private service: it imports the SDK on a worker thread while that
service starts (``load()``), so the two overlap.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from e2b_code_interpreter import AsyncSandbox

    from .quick_create import CreatedSandbox

__all__ = ["adopt", "async_sandbox", "load"]


def async_sandbox() -> type[AsyncSandbox]:
    """``e2b_code_interpreter.AsyncSandbox`` (imported on the first call)."""
    from e2b_code_interpreter import AsyncSandbox

    return AsyncSandbox


async def load() -> type[AsyncSandbox]:
    """``async_sandbox()``, imported on a worker thread while the event loop keeps serving."""
    if "e2b_code_interpreter" in sys.modules:  # imported: no thread hop
        return async_sandbox()
    return await asyncio.to_thread(async_sandbox)


def adopt(created: CreatedSandbox, opts: dict[str, Any]) -> AsyncSandbox:
    """The SDK's object for a sandbox created without the SDK (see .quick_create), built as
    ``AsyncSandbox.create`` builds its own from the create reply (e2b 2.x; a test compares
    the two). No request is sent: ``connect`` would also push the sandbox's timeout out."""
    from e2b import ConnectionConfig
    from packaging.version import Version

    headers = {
        "E2b-Sandbox-Id": created.sandbox_id,
        "E2b-Sandbox-Port": str(ConnectionConfig.envd_port),
    }
    if created.envd_access_token is not None:
        headers["X-Access-Token"] = created.envd_access_token
    return async_sandbox()(
        sandbox_id=created.sandbox_id,
        sandbox_domain=created.sandbox_domain,
        envd_version=Version(created.envd_version),
        envd_access_token=created.envd_access_token,
        traffic_access_token=created.traffic_access_token,
        connection_config=ConnectionConfig(extra_sandbox_headers=headers, **opts),
    )
