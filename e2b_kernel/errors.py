"""One exception hierarchy for e2b-kernel, mapped once to Jupyter ``error`` content.

::

    E2BKernelError                  base; str(exc) is a user-facing message (what + fix)
    ├── ConfigurationError          bad config value, missing API key in cloud mode
    ├── SandboxUnavailable          cannot create or reach a sandbox (auth, network, service)
    ├── SandboxLost                 sandbox killed, expired or not found: its state is gone
    ├── ExecutionTimeout            our own per-cell deadline passed
    └── ExecutionInterrupted        the cell was interrupted (shown as KeyboardInterrupt)
"""

from __future__ import annotations

import traceback as _traceback

__all__ = [
    "ConfigurationError",
    "E2BKernelError",
    "ExecutionInterrupted",
    "ExecutionTimeout",
    "SandboxLost",
    "SandboxUnavailable",
    "error_content",
]


class E2BKernelError(Exception):
    """Base of every error e2b-kernel raises on purpose; the message is meant for users."""


class ConfigurationError(E2BKernelError):
    """A configuration value is invalid or missing (for example no API key in cloud mode)."""


class SandboxUnavailable(E2BKernelError):
    """No sandbox could be created or reached (authentication, network, service down)."""


class SandboxLost(E2BKernelError):
    """The sandbox was killed, expired or is unknown: its Python state is gone."""


class ExecutionTimeout(E2BKernelError):
    """The cell ran longer than the configured cell timeout."""


class ExecutionInterrupted(E2BKernelError):
    """The cell was interrupted by the user."""


_ENAMES: dict[type, str] = {ExecutionInterrupted: "KeyboardInterrupt"}


def error_content(exc: BaseException) -> dict:
    """Return Jupyter ``error`` content (ename, evalue, traceback lines) for ``exc``.

    Our own errors get a short traceback of one line, the message, and never show internals.
    Anything else (a bug of ours) is shown by type and message only; the details go to the log.
    """
    if isinstance(exc, E2BKernelError):
        ename = _ENAMES.get(type(exc), type(exc).__name__)
        evalue = str(exc)
    elif isinstance(exc, (KeyboardInterrupt,)):
        ename, evalue = "KeyboardInterrupt", str(exc) or "interrupted"
    else:
        ename = type(exc).__name__
        evalue = str(exc) or "".join(_traceback.format_exception_only(type(exc), exc)).strip()
    line = f"\x1b[0;31m{ename}\x1b[0m: {evalue}" if evalue else f"\x1b[0;31m{ename}\x1b[0m"
    return {"ename": ename, "evalue": evalue, "traceback": [line]}
