"""The ``%%e2b`` cell magic and the ``%e2b`` line magic (``%load_ext e2b_kernel``).

The magics are synchronous (IPython calls them inside the kernel's running loop), so every
sandbox call runs on a private asyncio loop in a daemon thread (:mod:`.loop_thread`), as
IPython's ``%%script`` does. Events stream back to the calling thread and are printed or
displayed there as they arrive. All named sessions live on that one loop.
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import logging
import shlex
import sys
import threading
import weakref
from typing import Any

from IPython.core.display_functions import display
from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Int

from . import transfer
from .commands import CommandsMixin
from .config import SECRET_NAMES, SessionConfig
from .errors import E2BKernelError
from .loop_thread import LoopThread
from .remote_error import E2BRemoteError, remote_error, render_short
from .session import SandboxSession
from .shared_service import SharedLocalService
from .telemetry import execution_span

log = logging.getLogger("e2b_kernel.magics")

__all__ = ["E2BMagics", "E2BRemoteError", "load_ipython_extension", "unload_ipython_extension"]


class RemoteResult:
    """The value of a cell's last expression, as the sandbox rendered it (its MIME bundle)."""

    def __init__(self, data: dict[str, Any], metadata: dict[str, Any]) -> None:
        self.data = data
        self.metadata = metadata

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
        return self.data, self.metadata

    def __repr__(self) -> str:
        return str(self.data.get("text/plain", "<remote result>"))


def split_line(line: str) -> list[str]:
    """Split magic arguments as a POSIX shell does: quotes group words and are removed."""
    try:
        return shlex.split(line)
    except ValueError as exc:  # e.g. "No closing quotation"
        raise UsageError(f"cannot split the arguments ({exc}): {line}") from None


def parse_line(parser: Any, line: str, help_text: str | None) -> Any:
    """Parse magic arguments; print ``help_text`` and return None for ``-h`` / ``--help``."""
    argv = split_line(line)
    if {"-h", "--help"} & set(argv):
        print(inspect.cleandoc(help_text or parser.format_help()))
        return None
    return parser.parse_args(argv)


def parse_env(pairs: list[str], option: str = "--env") -> dict[str, str]:
    """Turn ``KEY=VALUE`` strings into a dict; a malformed pair is a usage error."""
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not key.replace("_", "a").isalnum() or key[0].isdigit():
            raise UsageError(
                f"{option} expects KEY=VALUE with a variable name as KEY, got {pair!r}"
            )
        if key in SECRET_NAMES:
            raise UsageError(f"{option}: {key} may not be sent into a sandbox")
        env[key] = value
    return env


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
        try:
            config = SessionConfig(**({"template": template} if template else {}))
            self.sessions[name] = SandboxSession(
                config, name=name, service_factory=self.local_service.factory
            )
        except Exception as exc:  # e.g. a bad E2B_KERNEL_* value: one line naming the fix
            raise shown(exc) from None
        return self.sessions[name]

    def call(self, coro: Any) -> Any:
        """Run a coroutine on the private loop; our errors are shown without our stack."""
        try:
            return self.loop.run(coro)
        except Exception as exc:
            raise shown(exc) from None

    def close_all(self) -> None:
        """Kill every sandbox, except those kept (``%e2b keep``, E2B_KERNEL_KEEP_SANDBOX=1)."""
        sessions, self.sessions = dict(self.sessions), {}

        async def close_each() -> list[Any]:
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
        try:
            return self._cell(args, cell)
        except KeyboardInterrupt as exc:
            raise _interrupted(exc, args.sandbox) from None

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
            pulled = self.call(
                transfer.pull(session, args.outputs, self.transfer_limit, args.unsafe_pickle)
            )
            self.user_ns.update(pulled)
        return None if args.quiet else result

    def _run_streaming(
        self, session: SandboxSession, code: str, args: Any, env: dict[str, str]
    ) -> RemoteResult | None:
        """Run the cell, print and display events as they arrive, raise a remote error."""
        result: RemoteResult | None = None
        error: dict[str, Any] | None = None
        events = session.execute(
            code, timeout=args.timeout, env_vars=env or None, language=args.language
        )
        with execution_span("magic", session.sandbox_id) as span:
            span.attributes["e2b.language"] = args.language
            try:
                for kind, content in self.loop.iterate(events):
                    if kind == "error":
                        error = content
                    elif kind == "execute_result":
                        result = RemoteResult(content.get("data", {}), content.get("metadata", {}))
                    elif not args.quiet:
                        _show(kind, content)
            except KeyboardInterrupt:
                span.fail("KeyboardInterrupt")
                raise
            except Exception as exc:
                span.fail(type(exc).__name__)
                raise shown(exc) from None
            span.sandbox_id = session.sandbox_id
            if error is not None:
                span.fail(str(error.get("ename", "Error")))
        if error is not None:  # raised outside the span, which records the remote name
            raise remote_error(error, args.sandbox) from None
        return result

    # ---- %e2b -------------------------------------------------------------------------------

    @no_var_expand
    @line_magic("e2b")  # type: ignore[arg-type]
    def e2b_line(self, line: str) -> Any:
        """Manage the sandboxes that run ``%%e2b`` cells.

        Usage: ``%e2b COMMAND [ARGS] [--sandbox NAME]``

        ======================== ==========================================================
        command                  does
        ======================== ==========================================================
        status                   backend, isolation, sandbox id, template, time left
        connect ID               attach to an existing sandbox (by id)
        kill                     kill the sandbox now (the next cell creates a new one)
        restart                  fresh Python state; files and packages are kept
        timeout SECONDS          set the sandbox's lifetime from now (kept refreshed)
        upload LOCAL [REMOTE]    copy a file or folder into the sandbox
        download REMOTE [LOCAL]  copy a file or folder out of the sandbox
        ls [PATH]                list a sandbox folder (default /home/user)
        list                     this account's running sandboxes, with metadata
        env [KEY=VALUE ...]      set variables for later cells; no argument lists them
        keep                     do not kill the sandbox when Python exits; print its id
        ======================== ==========================================================

        Relative sandbox paths are under /home/user. ``--sandbox NAME`` picks a named sandbox
        (the one ``%%e2b --sandbox NAME`` uses); the default is 'default'.

        Examples
        --------
        ::

            %e2b status
            %e2b upload data/ data
            %e2b download results/report.csv .
            %e2b env OPENAI_BASE_URL=http://localhost:8000
            %e2b timeout 3600 --sandbox scratch
        """
        try:
            return self.run_command(line)
        except KeyboardInterrupt as exc:
            raise _interrupted(exc, None) from None


def _interrupted(exc: KeyboardInterrupt, sandbox: str | None) -> KeyboardInterrupt:
    """Show a Ctrl-C as one line that says the sandbox state survived."""
    where = f"the cell in sandbox {sandbox!r} was" if sandbox else "the command was"
    line = f"\x1b[0;31mKeyboardInterrupt\x1b[0m: {where} interrupted; the sandbox keeps its state"
    exc._render_traceback_ = lambda: [line]  # type: ignore[attr-defined]
    return exc


def shown(exc: Exception) -> Exception:
    """Prepare ``exc`` for the user: one line, no stack of ours (a bug's stack goes to the log)."""
    expected = (E2BKernelError, transfer.TransferError, UsageError)
    if not isinstance(exc, expected) and not type(exc).__module__.startswith("e2b."):
        log.error("unexpected error in %%e2b", exc_info=exc)
    return exc if isinstance(exc, UsageError) else render_short(exc)


def _show(kind: str, content: dict[str, Any]) -> None:
    """Write a stream chunk or display a rich output, here and now."""
    if kind == "stream":
        stream = sys.stderr if content.get("name") == "stderr" else sys.stdout
        stream.write(str(content.get("text", "")))
        stream.flush()
    elif kind == "display_data":
        display(content.get("data", {}), raw=True, metadata=content.get("metadata") or None)


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
