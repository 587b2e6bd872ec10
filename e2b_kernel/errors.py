"""One exception hierarchy for everything e2b-kernel shows a user, mapped once to Jupyter.

::

    E2BKernelError                  base; str(exc) is a user-facing message (what + fix)
    ├── ConfigurationError          bad config value, missing API key in cloud mode
    ├── SandboxUnavailable          cannot create or reach a sandbox (auth, network, service)
    ├── SandboxLost                 sandbox killed, expired or not found: its state is gone
    ├── ExecutionTimeout            our own per-cell deadline passed
    ├── ExecutionInterrupted        the cell was interrupted (shown as KeyboardInterrupt)
    ├── TransferError               a variable or file could not be moved (%%e2b -i/-o, %e2b upload)
    └── E2BRemoteError              code in the sandbox raised; carries the remote traceback

IPython shows an exception through its ``_render_traceback_()`` when the class has one. Every
class here renders as one ``Name: message`` line (the remote error as the sandbox's own
traceback), so no stack frame of ours ever reaches a notebook.
"""

from __future__ import annotations

import builtins
import functools
import importlib.metadata
import traceback as _traceback
from typing import Any

__all__ = [
    "ConfigurationError",
    "E2BKernelError",
    "E2BRemoteError",
    "ExecutionInterrupted",
    "ExecutionTimeout",
    "KernelDied",
    "SandboxLost",
    "SandboxUnavailable",
    "TransferError",
    "error_content",
    "exception_line",
    "remote_error",
]


class E2BKernelError(Exception):
    """Base of every error e2b-kernel raises on purpose; the message is meant for users."""

    def _render_traceback_(self) -> list[str]:
        """What IPython shows instead of a Python traceback: one coloured line."""
        return list(error_content(self)["traceback"])


class ConfigurationError(E2BKernelError):
    """A configuration value is invalid or missing (for example no API key in cloud mode)."""


class SandboxUnavailable(E2BKernelError):
    """No sandbox could be created or reached (authentication, network, service down)."""


class SandboxLost(E2BKernelError):
    """The sandbox was killed, expired or is unknown: its Python state is gone."""


class KernelDied(E2BKernelError):
    """The sandbox's Python kernel process died under a cell (``os._exit``, a crash, out of
    memory) and its Jupyter Server restarted it, or could not; or another client of that
    server restarted it (``restarted``)."""

    def __init__(self, state: str) -> None:
        fresh = (
            "its variables are gone; files and installed packages are kept. Run the cells "
            "you need again."
        )
        if state == "restarted":
            super().__init__(
                "The Python kernel in the sandbox was restarted by another client of the "
                f"sandbox's Jupyter Server (port 8888): {fresh}"
            )
            return
        if state == "timeout":
            super().__init__(
                "The Python kernel in the sandbox was restarted because an earlier cell did "
                f"not stop at its timeout: {fresh}"
            )
            return
        if state == "dead":
            what = "and could not be restarted. Run the cell again to start a new one."
        else:
            what = f"and was restarted: {fresh}"
        super().__init__(
            "The Python kernel in the sandbox died (its process exited: os._exit, a crash, "
            f"or out of memory) {what}"
        )


class ExecutionTimeout(E2BKernelError):
    """The cell ran longer than the configured cell timeout."""


class ExecutionInterrupted(E2BKernelError):
    """The cell was interrupted by the user."""


class MessageTooLarge(E2BKernelError):
    """A front end's message is larger than the sandbox's Jupyter Server takes in one piece."""


class TransferError(E2BKernelError):
    """A variable or file could not be moved; the message names it and says what to do."""


class E2BRemoteError(E2BKernelError):
    """An exception raised by code running in a sandbox, re-raised here by ``%%e2b``.

    The message keeps the remote name (``E2BRemoteError: ZeroDivisionError: division by
    zero``). When the remote name is a builtin exception, the raised object is also an
    instance of it, so ``except ZeroDivisionError`` works around a ``%%e2b`` cell.
    """

    def __init__(self, ename: str, evalue: str, traceback: list[str], sandbox: str = "") -> None:
        super().__init__(f"{ename}: {evalue}" if evalue else ename)
        self.ename = ename
        self.evalue = evalue
        self.remote_traceback = list(traceback)
        self.sandbox = sandbox

    def __str__(self) -> str:
        # KeyError and friends would otherwise repr() the message.
        return str(self.args[0]) if self.args else self.ename

    def _render_traceback_(self) -> list[str]:
        """The remote traceback, as the sandbox's IPython formatted it."""
        return self.remote_traceback or [str(self)]


_REMOTE_CLASSES: dict[str, type[E2BRemoteError]] = {}


def _remote_class(ename: str) -> type[E2BRemoteError]:
    """``E2BRemoteError`` mixed with the builtin exception of that name, if there is one."""
    builtin = getattr(builtins, ename, None)
    if not (isinstance(builtin, type) and issubclass(builtin, Exception)):
        return E2BRemoteError
    if issubclass(builtin, SyntaxError):
        # IPython shows a SyntaxError from where it was raised (here: our own frames), never
        # through _render_traceback_, which shows the sandbox's.
        return E2BRemoteError
    if ename not in _REMOTE_CLASSES:
        try:
            # Same __name__ so the Jupyter error's ename stays "E2BRemoteError".
            _REMOTE_CLASSES[ename] = type("E2BRemoteError", (E2BRemoteError, builtin), {})
        except TypeError:  # incompatible layout: plain E2BRemoteError is still correct
            _REMOTE_CLASSES[ename] = E2BRemoteError
    return _REMOTE_CLASSES[ename]


def remote_error(content: dict[str, Any], sandbox: str = "") -> E2BRemoteError:
    """Build the exception for a Jupyter ``error`` content received from the sandbox."""
    ename = str(content.get("ename") or "Error")
    evalue = str(content.get("evalue") or "")
    traceback = [str(line) for line in content.get("traceback") or []]
    try:
        return _remote_class(ename)(ename, evalue, traceback, sandbox)
    except TypeError:  # a builtin whose constructor wants other arguments
        return E2BRemoteError(ename, evalue, traceback, sandbox)


_ENAMES: dict[type, str] = {ExecutionInterrupted: "KeyboardInterrupt"}


def error_content(exc: BaseException) -> dict:
    """Return Jupyter ``error`` content (ename, evalue, traceback lines) for ``exc``.

    Our own errors get a short traceback of one line, the message, and never show internals.
    Anything else (a bug of ours) is shown by type and message only; the details go to the log.
    """
    if isinstance(exc, E2BKernelError):
        ename = _ENAMES.get(type(exc), type(exc).__name__)
        evalue = str(exc)
    elif isinstance(exc, KeyboardInterrupt):
        ename, evalue = "KeyboardInterrupt", str(exc) or "interrupted"
    else:
        ename = type(exc).__name__
        evalue = str(exc) or "".join(_traceback.format_exception_only(type(exc), exc)).strip()
    return {"ename": ename, "evalue": evalue, "traceback": [exception_line(ename, evalue)]}


def exception_line(ename: str, evalue: str) -> str:
    """The ``Name: value`` line coloured as the IPython in use colours it (IPython 9 closes
    each colour on its own, 8 and older reset everything), so ours look like python3's."""
    if _ipython_major() >= 9:
        name = f"\x1b[31m{ename}\x1b[39m"
        return f"{name}\x1b[31m:\x1b[39m {evalue}" if evalue else name
    return f"\x1b[0;31m{ename}\x1b[0m: {evalue}" if evalue else f"\x1b[0;31m{ename}\x1b[0m"


@functools.cache
def _ipython_major() -> int:
    """The installed IPython's major version (0 without IPython), read once."""
    try:
        return int(importlib.metadata.version("ipython").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return 0
