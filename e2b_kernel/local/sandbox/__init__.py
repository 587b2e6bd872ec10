"""The sandbox: bubblewrap, the agent inside it, its limits and its network.

Its names are imported on first use (PEP 562): the kernel process imports
``e2b_kernel.local`` (for ``isolation``) as it starts, and needs none of the runtime's modules,
which would otherwise add about 0.1 s to its start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runtime import SANDBOX_HOME, LocalSandbox, SandboxKilled, SandboxStartError

__all__ = ["SANDBOX_HOME", "LocalSandbox", "SandboxKilled", "SandboxStartError"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
