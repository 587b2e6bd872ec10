"""``E2BRemoteError``: an exception raised in the sandbox, re-raised locally by ``%%e2b``.

IPython shows an exception's ``_render_traceback_()`` instead of formatting the local stack, so
the user sees the sandbox's traceback and none of our frames. The local error message keeps the
remote name (``E2BRemoteError: ZeroDivisionError: division by zero``). When the remote name is
a builtin exception, the raised object is also an instance of it, so
``except ZeroDivisionError`` works around a ``%%e2b`` cell run through ``get_ipython()``.
"""

from __future__ import annotations

import builtins
from typing import Any, TypeVar

from .errors import error_content

__all__ = ["E2BRemoteError", "remote_error", "render_short"]

E = TypeVar("E", bound=BaseException)


class E2BRemoteError(Exception):
    """An exception raised by code running in a sandbox."""

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


_SUBCLASSES: dict[str, type[E2BRemoteError]] = {}


def _class_for(ename: str) -> type[E2BRemoteError]:
    """``E2BRemoteError`` mixed with the builtin exception of that name, if there is one."""
    builtin = getattr(builtins, ename, None)
    if not (isinstance(builtin, type) and issubclass(builtin, Exception)):
        return E2BRemoteError
    if ename not in _SUBCLASSES:
        try:
            # Same __name__ so the Jupyter error's ename stays "E2BRemoteError".
            _SUBCLASSES[ename] = type("E2BRemoteError", (E2BRemoteError, builtin), {})
        except TypeError:  # incompatible layout: plain E2BRemoteError is still correct
            _SUBCLASSES[ename] = E2BRemoteError
    return _SUBCLASSES[ename]


def remote_error(content: dict[str, Any], sandbox: str = "") -> E2BRemoteError:
    """Build the exception for a Jupyter ``error`` content received from the sandbox."""
    ename = str(content.get("ename") or "Error")
    evalue = str(content.get("evalue") or "")
    traceback = [str(line) for line in content.get("traceback") or []]
    try:
        return _class_for(ename)(ename, evalue, traceback, sandbox)
    except TypeError:  # a builtin whose constructor wants other arguments
        return E2BRemoteError(ename, evalue, traceback, sandbox)


def render_short(exc: E) -> E:
    """Make IPython show ``exc`` as one ``Name: message`` line, without our stack frames."""
    lines = error_content(exc)["traceback"]
    exc._render_traceback_ = lambda: lines  # type: ignore[attr-defined]
    return exc
