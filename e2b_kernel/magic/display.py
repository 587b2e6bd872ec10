"""What ``%%e2b`` and ``%e2b`` show: streamed events, the cell's result, and failures.

Remote outputs go through the local IPython's own display machinery, so in a ``python3``
kernel they become the same Jupyter messages (display ids, metadata and ``clear_output``'s
``wait`` kept), and ``input()``/``getpass()`` go through its stdin channel.

:func:`for_user` is the one place that turns any failure into what the user sees:

- a ``UsageError`` stays as IPython shows it;
- our own errors (``E2BKernelError``, including remote errors and transfer errors) render
  themselves as one line, or as the remote traceback;
- a Ctrl-C becomes :class:`CellInterrupted`, one line saying the sandbox kept its state;
- an SDK or I/O error becomes a one-line ``SandboxRequestFailed``;
- anything else is a bug of ours: logged with its stack, shown as one line.
"""

from __future__ import annotations

import getpass
import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from IPython.core.display_functions import clear_output, publish_display_data
from IPython.core.error import StdinNotImplementedError, UsageError
from IPython.core.getipython import get_ipython

from ..core.active_content import guard_event
from ..core.sdk_errors import is_sdk_error
from ..errors import E2BKernelError, error_content, exception_line

if TYPE_CHECKING:
    from ..core.jupyter_cells import LateOutput

log = logging.getLogger("e2b_kernel.magic")

__all__ = [
    "CellInterrupted",
    "LocalPrompt",
    "RemoteResult",
    "SandboxRequestFailed",
    "ask_locally",
    "for_user",
    "show_event",
]


class SandboxRequestFailed(E2BKernelError):
    """A request to the sandbox failed: an SDK or I/O error, shown by its own name and message."""

    def __init__(self, original: BaseException) -> None:
        content = error_content(original)
        super().__init__(content["evalue"])
        self.ename = str(content["ename"])
        self._lines = list(content["traceback"])

    def _render_traceback_(self) -> list[str]:
        return list(self._lines)


_FAILURE_CLASSES: dict[str, type[SandboxRequestFailed]] = {}


def request_failed(original: BaseException) -> SandboxRequestFailed:
    """``SandboxRequestFailed`` for ``original``, of a subclass named as it is: ipykernel
    reports a cell's ename as the class name, which must be the one its line shows
    (``FileNotFoundException: path ... does not exist``)."""
    name = type(original).__name__
    if name not in _FAILURE_CLASSES:
        _FAILURE_CLASSES[name] = type(name, (SandboxRequestFailed,), {})
    return _FAILURE_CLASSES[name](original)


class CellInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``%%e2b``/``%e2b``: still a KeyboardInterrupt, shown as one line."""

    def _render_traceback_(self) -> list[str]:
        return [exception_line("KeyboardInterrupt", str(self))]


# ipykernel reports a cell's ename as the exception's class name: it must stay the builtin one.
CellInterrupted.__name__ = CellInterrupted.__qualname__ = "KeyboardInterrupt"


def for_user(exc: BaseException, sandbox: str | None = None) -> BaseException:
    """The exception to raise to the user for ``exc`` (see the module docstring)."""
    if isinstance(exc, (UsageError, E2BKernelError, CellInterrupted)):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        where = f"the cell in sandbox {sandbox!r} was" if sandbox else "the command was"
        return CellInterrupted(f"{where} interrupted; the sandbox keeps its state")
    if not isinstance(exc, Exception):
        return exc  # SystemExit and friends are not ours to reword
    if not (is_sdk_error(exc) or isinstance(exc, OSError)):
        log.error("unexpected error in %%e2b", exc_info=exc)
    return request_failed(exc)


class RemoteResult:
    """The value of a cell's last expression, as the sandbox rendered it (its MIME bundle)."""

    def __init__(self, data: dict[str, Any], metadata: dict[str, Any]) -> None:
        self.data = data
        self.metadata = metadata

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
        return self.data, self.metadata

    def __repr__(self) -> str:
        return str(self.data.get("text/plain", "<remote result>"))


def show_event(kind: str, content: dict[str, Any]) -> None:
    """Write a stream chunk or display a rich output, here and now."""
    if kind == "stream":
        stream = sys.stderr if content.get("name") == "stderr" else sys.stdout
        stream.write(str(content.get("text", "")))
        stream.flush()
    elif kind in ("display_data", "update_display_data"):
        publish_display_data(
            content.get("data", {}),
            content.get("metadata") or {},
            transient=content.get("transient") or None,
            update=kind == "update_display_data",
        )
    elif kind == "clear_output":
        clear_output(wait=bool(content.get("wait")))


def show_payload(payload: dict[str, Any], magic_line: str) -> None:
    """A remote reply's payload, here: ``obj?``'s help to the pager (in a Jupyter kernel,
    the front end's pager), ``%load``'s text as the next input, as a cell of ``magic_line``
    (it is code for the sandbox)."""
    shell = get_ipython()
    if payload.get("source") == "page":
        from IPython.core import page

        page.page(payload.get("data") or {}, start=int(payload.get("start") or 0))
    elif payload.get("source") == "set_next_input" and shell is not None:
        text = f"{magic_line}\n{payload.get('text', '')}"
        shell.set_next_input(text, replace=bool(payload.get("replace")))


def late_output_here(trusted: bool = False) -> LateOutput | None:
    """Where the running cell's late output goes (what its remote threads and tasks send once
    it has ended): that cell's output area, as on python3, in a Jupyter kernel; None
    elsewhere (a terminal IPython has no cell to show it in). Held back as the cell's own
    output is, unless ``trusted``."""
    shell = get_ipython()
    kernel = getattr(shell, "kernel", None)
    if kernel is None or not hasattr(kernel, "get_parent"):
        return None
    parent = kernel.get_parent()  # this cell's request: output sent for it lands in it
    session, iopub = kernel.session, kernel.iopub_socket

    def publish(msg_type: str, content: dict[str, Any]) -> None:
        if not trusted:
            content = guard_event(msg_type, content)
        session.send(iopub, msg_type, content, parent=parent, ident=msg_type.encode())

    return publish


class LocalPrompt:
    """Asks the remote cell's questions here (:func:`ask_locally`), and closes a question
    whose cell ended meanwhile (its ``--timeout``): the prompt would otherwise stay open, and
    the answer be thrown away, until the user typed one. One per cell run."""

    def __init__(self) -> None:
        # Only the main thread can be interrupted (Python runs signal handlers there): from
        # another one (a kernel subshell) the question stays open until answered.
        self._can_interrupt = threading.current_thread() is threading.main_thread()
        self._lock = threading.Lock()
        self._asking = False
        self._closed = False  # the cell ended: no question of it is asked any more

    def ask(self, content: dict[str, Any]) -> str | None:
        """The answer; None when the cell ended before it came."""
        with self._lock:
            if self._closed:
                return None  # it ended before its question was even shown
            self._asking = True
        try:
            try:
                return ask_locally(content)
            finally:
                with self._lock:
                    self._asking = False
        except KeyboardInterrupt:
            # (Caught out here: close()'s signal may land while the lock is being released.)
            if self._closed:
                return None
            raise

    def close(self) -> None:
        """From any thread: the cell ended; end the question being asked, as Ctrl-C would."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._asking and self._can_interrupt:
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)


def ask_locally(content: dict[str, Any]) -> str:
    """Answer a remote ``input_request`` here: ``input()``, or ``getpass`` for a password.

    Looked up when called: ipykernel swaps both for versions that ask its front end.
    """
    prompt = str(content.get("prompt", ""))
    try:
        if content.get("password"):
            return getpass.getpass(prompt)
        return input(prompt)
    except (KeyboardInterrupt, E2BKernelError):
        raise
    except Exception as exc:  # StdinNotImplementedError, EOFError: nobody can answer here
        kind = InputNotAllowed if isinstance(exc, StdinNotImplementedError) else E2BKernelError
        raise kind(
            f"The cell asked for input, but it cannot be answered here ({type(exc).__name__}: "
            f"{exc}); the remote cell was interrupted. Run it where input is allowed, or put "
            "the value in the code."
        ) from None


class InputNotAllowed(E2BKernelError, StdinNotImplementedError):
    """The front end allows no input (nbclient, papermill): caught as on ``python3`` by
    ``except StdinNotImplementedError``."""
