"""The E2B SDK's sandbox class, imported when first needed instead of with the package.

Importing ``e2b_code_interpreter`` (and with it ``e2b``) takes about 0.3 s on a 2-core VM,
longer than a ``python3`` kernel takes to answer its first request. The kernel no longer pays
it before it can launch its private service: it imports the SDK on a worker thread while that
service starts (``load()``), so the two overlap.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from e2b_code_interpreter import AsyncSandbox

__all__ = ["async_sandbox", "load"]


def async_sandbox() -> type[AsyncSandbox]:
    """``e2b_code_interpreter.AsyncSandbox`` (imported on the first call)."""
    from e2b_code_interpreter import AsyncSandbox

    return AsyncSandbox


async def load() -> type[AsyncSandbox]:
    """``async_sandbox()``, imported on a worker thread while the event loop keeps serving."""
    return await asyncio.to_thread(async_sandbox)
