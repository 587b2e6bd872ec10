"""Which remote kernel of the sandbox's Jupyter Server a front end uses, and how reaching it fails.

Both front ends that speak Jupyter (the kernel's relay and ``%%e2b`` on the jupyter transport)
use the kernel of the sandbox's default Python context, so they share one namespace with
``Sandbox.run_code``, the ``/execute`` hidden code and ``%%e2b -i/-o``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..errors import E2BKernelError, SandboxLost, SandboxUnavailable
from .jupyter_server import JupyterEndpoint, JupyterServerError
from .session import SandboxSession

__all__ = ["closed_error", "pick_remote_kernel", "reach_remote_kernel"]

T = TypeVar("T")


async def pick_remote_kernel(
    session: SandboxSession,
    endpoint: JupyterEndpoint,
    log: logging.Logger,
    previous: str | None = None,
) -> tuple[str, bool]:
    """The remote kernel's id, and whether it was started here (then the caller owns it).

    In order: ``previous`` (a restart: it is restarted, so Python state is fresh and files
    stay), the sandbox's default Python context (one namespace with ``Sandbox.run_code``), or
    a new kernel.
    """
    if previous is not None and previous in await _kernel_ids(endpoint):
        await endpoint.restart(previous)
        log.info("restarted remote kernel %s", previous)
        return previous, False
    # Both lists at once: one round trip to the sandbox instead of two on the way to the first
    # cell. E2B lists a context only once its kernel runs (a fresh sandbox starts the default
    # one in the background), so a listed context missing from a kernel list taken at the
    # same moment may have started in between: the kernels are asked again before giving up.
    context_ids, kernels = await asyncio.gather(
        session.code_context_ids("python"), _kernel_ids(endpoint)
    )
    if any(context_id not in kernels for context_id in context_ids):
        kernels = await _kernel_ids(endpoint)
    for context_id in context_ids:
        if context_id in kernels:
            log.info("using the default Python context's kernel %s", context_id)
            return context_id, False
    kernel_id = await endpoint.start_kernel()
    log.info("started remote kernel %s", kernel_id)
    return kernel_id, True


async def _kernel_ids(endpoint: JupyterEndpoint) -> set[str]:
    return {str(k.get("id")) for k in await endpoint.list_kernels()}


async def reach_remote_kernel(session: SandboxSession, connect: Callable[[], Awaitable[T]]) -> T:
    """Run ``connect`` (pick the remote kernel, open its channels), explaining a failure:
    ``SandboxLost`` when the sandbox is gone, else ``SandboxUnavailable`` naming the fix."""
    try:
        return await connect()
    except (JupyterServerError, OSError) as exc:
        await _raise_if_lost(session)
        raise SandboxUnavailable(
            f"The sandbox's Jupyter Server cannot be reached ({exc}). "
            "Run the cell again, or set E2B_KERNEL_TRANSPORT=execute."
        ) from None
    except E2BKernelError:
        raise
    except Exception as exc:  # websockets' handshake errors, among others
        await _raise_if_lost(session)
        raise SandboxUnavailable(
            f"The kernel channels of the sandbox's Jupyter Server did not open "
            f"({type(exc).__name__}: {exc}). Run the cell again."
        ) from None


async def _raise_if_lost(session: SandboxSession) -> None:
    message = await session.confirm_lost()
    if message is not None:
        raise SandboxLost(message)


async def closed_error(session: SandboxSession, reason: str) -> E2BKernelError:
    """Why the kernel channels closed by themselves, for the user: the sandbox is gone (it is
    then forgotten, so the next cell starts a new one), or only the connection failed."""
    message = await session.confirm_lost()
    if message is not None:
        return SandboxLost(message)
    return SandboxUnavailable(
        f"The connection to the sandbox's Jupyter kernel failed ({reason}). The sandbox "
        "is still running; run the cell again."
    )
