"""Where a session's sandboxes run: E2B cloud, or a local service behind one ``ServiceHandle``.

- :class:`Backend` resolves ``cloud``/``local`` and gives the SDK its settings.
- :mod:`.handles`: the ``ServiceHandle`` type, the in-process and the shared local service.
- :mod:`.hosted`: the kernel's private service in a helper process that outlives a restart;
  :mod:`.early` launches it as the kernel process starts, when the environment says it is
  needed; :mod:`.early_sandbox` likewise asks a running service for the kernel's sandbox.
- :mod:`.restart_state`: what a kernel process hands to its restarted successor.

Names are imported on first use (PEP 562): ``python -m e2b_kernel`` imports ``.early`` before
anything else, and must not pay for the others (asyncio, traitlets, psutil) first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backend import CLOUD_ISOLATION, Backend
    from .early import discard_early, launch_early
    from .early_sandbox import create_early
    from .handles import InProcessService, ServiceHandle, SharedLocalService, SharedView
    from .hosted import HostedService

_LAZY = {
    "CLOUD_ISOLATION": "backend",
    "Backend": "backend",
    "HostedService": "hosted",
    "InProcessService": "handles",
    "ServiceHandle": "handles",
    "SharedLocalService": "handles",
    "SharedView": "handles",
    "create_early": "early_sandbox",
    "discard_early": "early",
    "launch_early": "early",
}

__all__ = [
    "CLOUD_ISOLATION",
    "Backend",
    "HostedService",
    "InProcessService",
    "ServiceHandle",
    "SharedLocalService",
    "SharedView",
    "create_early",
    "discard_early",
    "launch_early",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{module}", __name__), name)
