"""e2b-kernel: run Jupyter notebooks in E2B sandboxes.

Public API (flat namespace, private modules behind it):

- ``SandboxExecutor``: async context manager that runs code in a sandbox (TTA.dev contract).
- ``load_ipython_extension``: ``%load_ext e2b_kernel`` registers ``%%e2b`` and ``%e2b``.
- The exception hierarchy in :mod:`e2b_kernel.errors`.

Imports are lazy so that ``python -m e2b_kernel`` (the kernel) and the CLI start quickly.

Packages, from the bottom up (the README's "Development" section draws the whole tree):
``errors``/``config``; ``backends`` (where sandboxes run) and ``core`` (``SandboxSession``);
the front ends ``kernel``, ``magic``, ``executor`` and ``cli``; and ``local``, the E2B-compatible
service, which imports nothing from the rest.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

# Without any handler, logging prints warnings and our logged stacks through its last-resort
# handler on sys.stderr, which in a notebook is the cell's output. Our log is for whoever
# configures logging; users see one-line errors.
logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.1.0"

__all__ = [
    "E2BKernelError",
    "E2BRemoteError",
    "ExecutionTimeout",
    "SandboxExecutor",
    "SandboxLost",
    "SandboxUnavailable",
    "TransferError",
    "__version__",
    "load_ipython_extension",
    "unload_ipython_extension",
]

if TYPE_CHECKING:
    from .errors import (
        E2BKernelError,
        E2BRemoteError,
        ExecutionTimeout,
        SandboxLost,
        SandboxUnavailable,
        TransferError,
    )
    from .executor import SandboxExecutor

_LAZY = {
    "SandboxExecutor": "executor",
    "E2BKernelError": "errors",
    "E2BRemoteError": "errors",
    "TransferError": "errors",
    "ExecutionTimeout": "errors",
    "SandboxLost": "errors",
    "SandboxUnavailable": "errors",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'e2b_kernel' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{module}", __name__), name)


def load_ipython_extension(ipython: Any) -> None:
    """Register the ``%%e2b`` cell magic and the ``%e2b`` line magic."""
    from .magic import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """Stop the extension's sandboxes and forget its magics."""
    from .magic import unload_ipython_extension as unload

    unload(ipython)
