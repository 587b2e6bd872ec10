"""The ``%%e2b`` cell magic and the ``%e2b`` line magic (``%load_ext e2b_kernel``).

The magics are synchronous (IPython calls them inside the kernel's running loop), so every
sandbox call runs on a private asyncio loop in a daemon thread (:mod:`.loop_thread`), as
IPython's ``%%script`` does. Events stream back to the calling thread and are printed or
displayed there as they arrive. All named sessions live on that one loop.
"""

from __future__ import annotations

import asyncio
import atexit
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from IPython.core.display_functions import display
from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Int

from ..backends import SharedLocalService
from ..config import SessionConfig
from ..core import SandboxSession
from ..core.active_content import guard_event
from ..errors import remote_error
from . import transfer
from .arguments import parse_env, parse_line, sandbox_name
from .commands import HELP, CommandsMixin
from .display import (
    LocalPrompt,
    RemoteResult,
    for_user,
    late_output_here,
    show_event,
    show_payload,
)
from .loop_thread import LoopThread
from .transport import Transports

__all__ = ["E2BMagics", "load_ipython_extension", "unload_ipython_extension"]

F = TypeVar("F", bound=Callable[..., Any])


def _documented_by(text: str) -> Callable[[F], F]:
    """Give a function a docstring built at import time (help text made from a table)."""

    def document(function: F) -> F:
        function.__doc__ = text
        return function

    return document


@magics_class
class E2BMagics(CommandsMixin, Magics):
    """Run cells in E2B sandboxes: ``%%e2b`` for a cell, ``%e2b`` for sandbox commands."""

    transfer_limit = Int(
        transfer.DEFAULT_LIMIT_BYTES,
        help="Largest pickled size in bytes that %%e2b -i / -o moves.",
    ).tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self.loop = LoopThread("e2b-magics")
        self.sessions: dict[str, SandboxSession] = {}
        self.env: dict[str, dict[str, str]] = {}  # per sandbox name, from %e2b env
        self.keep: set[str] = set()  # sandbox names to keep at exit
        self.local_service = SharedLocalService()  # used when the backend is local
        self.transports = Transports()
        _at_exit(self)

    @property
    def user_ns(self) -> dict[str, Any]:
        """The namespace -i reads from and -o writes to."""
        assert self.shell is not None
        return self.shell.user_ns

    # ---- sessions -----------------------------------------------------------------------

    def session(self, name: str, template: str | None = None) -> SandboxSession:
        """The session called ``name``, created (not yet started) on first use."""
        current = self.sessions.get(name)
        if current is not None:
            if template and template != current.config.template and current.sandbox_id:
                raise UsageError(
                    f"--template applies only when a sandbox is created; sandbox {name!r} "
                    f"already runs {current.config.template!r}. Use --sandbox OTHER_NAME, or "
                    "%e2b kill first."
                )
            if template:
                current.config.template = template
            return current
        config = SessionConfig(**({"template": template} if template else {}))
        session = SandboxSession(config, name=name, service_factory=self.local_service.factory)
        self.transports.describe_unchosen(session)
        self.sessions[name] = session
        return session

    def call(self, coro: Any) -> Any:
        """Run a coroutine on the private loop and return its result."""
        return self.loop.run(coro)

    def close_all(self) -> None:
        """Kill every sandbox, except those kept (``%e2b keep``, E2B_KERNEL_KEEP_SANDBOX=1)."""
        sessions, self.sessions = dict(self.sessions), {}
        running = {name: session.sandbox_id for name, session in sessions.items()}

        async def close_each() -> list[Any]:
            await self.transports.close_all()
            return await asyncio.gather(  # all at once: killing a sandbox can take seconds
                *(
                    session.close(keep=name in self.keep or session.config.keep_sandbox)
                    for name, session in sessions.items()
                ),
                return_exceptions=True,
            )

        try:
            outcomes = self.loop.run(close_each()) if sessions else []
        except BaseException as exc:  # at exit nothing may stop the other cleanups
            outcomes = [exc] * len(sessions)
        for name, outcome in zip(sessions, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                print(f"[e2b] could not close sandbox {name!r}: {outcome}", file=sys.stderr)
            elif outcome:
                print(f"[e2b] kept sandbox {outcome}; reattach with %e2b connect {outcome}")
            elif running[name]:  # said, so that %reload_ext does not lose state silently
                print(f"[e2b] killed sandbox {running[name]} ({name!r}): its state is gone")
        try:
            self.local_service.stop()
        except Exception as exc:
            print(f"[e2b] could not stop the local E2B service: {exc}", file=sys.stderr)
        self.loop.stop()

    # ---- %%e2b ------------------------------------------------------------------------------

    @no_var_expand
    @magic_arguments("%e2b")
    @argument(
        "--sandbox",
        default="default",
        type=sandbox_name,
        metavar="NAME",
        help="Which sandbox runs the cell; each name is its own sandbox (default: 'default').",
    )
    @argument("--timeout", type=float, metavar="SECONDS", help="Deadline for this cell.")
    @argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Environment variable for this cell only; repeatable.",
    )
    @argument(
        "--language",
        default="python",
        metavar="LANG",
        help="Language context: python (default), bash, r, js, ... as the template offers.",
    )
    @argument(
        "-i",
        dest="inputs",
        action="append",
        default=[],
        metavar="VAR",
        help="Push the local variable VAR into the sandbox before the cell; repeatable.",
    )
    @argument(
        "-o",
        dest="outputs",
        action="append",
        default=[],
        metavar="VAR",
        help="Pull the sandbox variable VAR into the local namespace after the cell; repeatable.",
    )
    @argument(
        "--template",
        metavar="TEMPLATE",
        help="Sandbox template; only used when this cell creates the sandbox.",
    )
    @argument(
        "-q",
        "--quiet",
        action="store_true",
        help="Show no output or result; errors are still raised.",
    )
    @argument(
        "--unsafe-pickle",
        action="store_true",
        help="With -o, accept any pickled type (runs code from the sandbox on this machine).",
    )
    @cell_magic("e2b")  # type: ignore[arg-type]
    def e2b_cell(self, line: str, cell: str) -> Any:
        """Run this cell in a persistent E2B sandbox and show its output as it arrives.

        The sandbox is created on first use and killed when Python exits (see ``%e2b``).
        Variables live in the sandbox, not here: move them with -i / -o. A remote exception is
        raised here as ``E2BRemoteError: <RemoteName>: <message>`` with the remote traceback.
        Ctrl-C (interrupt the kernel) stops the remote cell; the sandbox keeps its state.
        Python cells use the sandbox's Jupyter Server when it answers (E2B_KERNEL_TRANSPORT),
        so input(), clear_output and display updates work; ``%e2b status`` says which.

        Examples
        --------
        ::

            %%e2b
            import platform
            print(platform.node())

            %%e2b -i df -o summary --timeout 60
            summary = df.describe()

            %%e2b --sandbox scratch --env API_URL=http://x --language bash
            echo "$API_URL"
        """
        args = parse_line(self.e2b_cell.parser, line, self.e2b_cell.__doc__)
        if args is None:
            return None
        args.magic_line = f"%%e2b {line}".rstrip()
        try:
            return self._cell(args, cell)
        except BaseException as exc:  # the one place a failure becomes what the user sees
            raise for_user(exc, args.sandbox) from None

    def _cell(self, args: Any, cell: str) -> Any:
        """``%%e2b`` after argument parsing."""
        env = {**self.env.get(args.sandbox, {}), **parse_env(args.env)}
        if args.timeout is not None and args.timeout <= 0:
            raise UsageError(f"--timeout must be a positive number of seconds, got {args.timeout}")
        if (args.inputs or args.outputs) and args.language != "python":
            raise UsageError("-i / -o move Python variables; they need --language python")
        for option, names in (("-i", args.inputs), ("-o", args.outputs)):
            for name in names:
                if not name.isidentifier():
                    raise UsageError(f"{option} {name!r}: expected a variable name such as df")
        missing = [name for name in args.inputs if name not in self.user_ns]
        if missing:
            raise UsageError(f"-i {missing[0]}: no variable named {missing[0]!r} here")
        session = self.session(args.sandbox, args.template)
        self.call(session.start())
        if args.inputs:
            values = {name: self.user_ns[name] for name in args.inputs}
            self.call(transfer.push(session, values, self.transfer_limit))
        result = self._run_streaming(session, cell, args, env)
        if args.outputs:
            try:
                pulled = self.call(
                    transfer.pull(session, args.outputs, self.transfer_limit, args.unsafe_pickle)
                )
            except BaseException:
                if result is not None and not args.quiet:
                    display(result)  # the cell ran: its value is not lost with the pull
                raise
            self.user_ns.update(pulled)
        return None if args.quiet else result

    def _run_streaming(
        self, session: SandboxSession, code: str, args: Any, env: dict[str, str]
    ) -> RemoteResult | None:
        """Run the cell, print and display events as they arrive, raise a remote error."""
        result: RemoteResult | None = None
        error: dict[str, Any] | None = None
        cells = None
        trusted = session.config.trust_outputs  # else active content is held back
        prompt = LocalPrompt()
        if args.language == "python":  # see .transport: other languages need /execute
            cells = self.call(self.transports.cells_for(args.sandbox, session))
        if cells is not None:
            events = cells.execute(
                code,
                timeout=args.timeout,
                env_vars=env or None,
                front_end="magic",
                late_output=None if args.quiet else late_output_here(trusted),
                on_unanswered=prompt.close,
            )
        else:
            events = session.execute(
                code,
                timeout=args.timeout,
                env_vars=env or None,
                language=args.language,
                front_end="magic",
            )
        for kind, content in self.loop.iterate(events):
            if not trusted:
                content = guard_event(kind, content)  # see core.active_content
            if kind == "error":
                error = content
            elif kind == "execute_result":
                result = RemoteResult(content.get("data", {}), content.get("metadata", {}))
            elif kind == "input_request" and cells is not None:
                answer = prompt.ask(content)
                if answer is not None:  # else the cell ended first: its error comes next
                    self.call(cells.answer(answer))
            elif kind == "payload":
                if not args.quiet:
                    show_payload(content, args.magic_line)
            elif not args.quiet:
                show_event(kind, content)
        if error is not None:
            raise remote_error(error, args.sandbox)
        return result

    # ---- %e2b -------------------------------------------------------------------------------

    @no_var_expand
    @line_magic("e2b")  # type: ignore[arg-type]
    @_documented_by(HELP)  # %e2b? shows the table the parser is built from
    def e2b_line(self, line: str) -> Any:
        try:
            return self.run_command(line)
        except BaseException as exc:  # the one place a failure becomes what the user sees
            raise for_user(exc) from None


def _at_exit(magics: E2BMagics) -> None:
    """Close the sandboxes of ``magics`` when Python exits (if it is still loaded then).

    Plain ``atexit`` runs too late: by then concurrent.futures has shut its thread pools
    down, and asyncio (``to_thread``, DNS lookups) cannot use them. ``threading``'s own exit
    hooks run before that, while the pools still work.
    """
    # Imported first so that its exit hook is registered before ours, and so runs after it.
    import concurrent.futures.thread  # noqa: F401

    ref = weakref.ref(magics)

    def close() -> None:
        target = ref()
        if target is not None:
            target.close_all()

    try:
        threading._register_atexit(close)  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):  # another Python, or already shutting down
        atexit.register(close)


def load_ipython_extension(ipython: Any) -> None:
    """Register ``%%e2b`` and ``%e2b`` (once per shell)."""
    if getattr(ipython, "_e2b_magics", None) is None:
        ipython._e2b_magics = E2BMagics(ipython)
        ipython.register_magics(ipython._e2b_magics)


def unload_ipython_extension(ipython: Any) -> None:
    """Kill the extension's sandboxes and remove the magics."""
    magics = getattr(ipython, "_e2b_magics", None)
    if magics is None:
        return
    magics.close_all()
    ipython._e2b_magics = None
    for kind in ("line", "cell"):
        ipython.magics_manager.magics[kind].pop("e2b", None)
