"""The ``%e2b COMMAND`` line commands, mixed into ``E2BMagics``."""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import MagicArgumentParser

from . import sandbox_files
from .remote_error import render_short

if TYPE_CHECKING:
    from .loop_thread import LoopThread
    from .session import SandboxSession

__all__ = ["CommandsMixin", "build_parser"]


def build_parser() -> MagicArgumentParser:
    """The ``%e2b`` parser: one subcommand per line command; errors are UsageErrors."""
    parser = MagicArgumentParser(prog="%e2b", description="Manage %%e2b sandboxes.")
    common = MagicArgumentParser(add_help=False)
    common.add_argument("--sandbox", default="default", metavar="NAME", help="named sandbox")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=MagicArgumentParser)
    sub.required = True

    def add(name: str, help: str) -> MagicArgumentParser:
        return sub.add_parser(name, help=help, parents=[common], prog=f"%e2b {name}")

    add("status", "backend, isolation, sandbox id, template, time left")
    add("connect", "attach to an existing sandbox").add_argument("sandbox_id", metavar="ID")
    add("kill", "kill the sandbox now")
    add("restart", "fresh Python state, files kept")
    add("timeout", "set the sandbox lifetime").add_argument("seconds", type=int, metavar="SECONDS")
    upload = add("upload", "copy a local file or folder into the sandbox")
    upload.add_argument("local", metavar="LOCAL")
    upload.add_argument("remote", nargs="?", metavar="REMOTE")
    download = add("download", "copy a sandbox file or folder here")
    download.add_argument("remote", metavar="REMOTE")
    download.add_argument("local", nargs="?", metavar="LOCAL")
    add("ls", "list a sandbox folder").add_argument("path", nargs="?", metavar="PATH")
    add("list", "this account's running sandboxes")
    add("env", "set variables for later cells").add_argument(
        "pairs", nargs="*", metavar="KEY=VALUE"
    )
    add("keep", "keep the sandbox when Python exits")
    return parser


class CommandsMixin:
    """Implements ``%e2b``; the host class provides sessions, the loop and ``call``."""

    loop: LoopThread
    sessions: dict[str, SandboxSession]
    env: dict[str, dict[str, str]]
    keep: set[str]
    e2b_line: Any  # the %e2b magic, whose docstring is the help
    _parser: MagicArgumentParser | None = None

    def session(self, name: str, template: str | None = None) -> SandboxSession:
        raise NotImplementedError

    def call(self, coro: Any) -> Any:
        raise NotImplementedError

    def run_command(self, line: str) -> Any:
        """Parse and run one ``%e2b`` command line."""
        if self._parser is None:
            self._parser = build_parser()
        if not line.strip():
            raise UsageError("%e2b needs a command, e.g. %e2b status (see %e2b? for all)")
        from .magics import parse_line

        args = parse_line(self._parser, line, self.e2b_line.__doc__)
        if args is None:
            return None
        handler = getattr(self, f"_cmd_{args.command}")
        try:
            return handler(args)
        except UsageError:
            raise
        except Exception as exc:
            if hasattr(exc, "_render_traceback_"):  # already made short by call() or _files()
                raise
            from .magics import shown

            raise shown(exc) from None  # e.g. no E2B_API_KEY for %e2b list: one line

    def _started(self, name: str) -> SandboxSession:
        session = self.session(name)
        self.call(session.start())
        return session

    def _cmd_status(self, args: Any) -> None:
        session = self.sessions.get(args.sandbox)
        if session is None or session.sandbox_id is None:
            session = self.session(args.sandbox)
            self.call(session.start_backend())  # so that the isolation is known
            print(f"sandbox {args.sandbox!r}: not started (created by the first %%e2b cell)")
        info = self.call(session.status())
        left = _time_left(info.get("end_at"))
        print(f"backend:    {info.get('backend')}")
        print(f"isolation:  {info.get('isolation')}")
        print(f"sandbox:    {info.get('sandbox_id') or '-'}  (name {args.sandbox!r})")
        print(f"template:   {info.get('template')}")
        print(f"time left:  {left}")
        if info.get("error"):
            print(f"warning:    {info['error']}")

    def _cmd_connect(self, args: Any) -> None:
        old = self.sessions.pop(args.sandbox, None)
        session = self.session(args.sandbox)
        try:
            self.call(session.connect(args.sandbox_id))
        except BaseException:
            # A mistyped id must not cost the current sandbox: put the old session back.
            self.sessions.pop(args.sandbox, None)
            if old is not None:
                self.sessions[args.sandbox] = old
            with contextlib.suppress(Exception):  # it holds no sandbox; the error above counts
                self.loop.run(session.close())
            raise
        if old is not None:
            previous = old.sandbox_id
            if previous == session.sandbox_id:
                old.sandbox = None  # the same sandbox, now driven by the new session
            kept = self.call(old.close(keep=True))
            if kept:
                print(f"the previous sandbox {kept} keeps running (%e2b connect {kept} returns)")
            elif previous not in (None, session.sandbox_id):
                print(f"the previous sandbox {previous} was killed")
        print(f"connected sandbox {args.sandbox!r} to {session.sandbox_id}")

    def _cmd_kill(self, args: Any) -> None:
        session = self.sessions.pop(args.sandbox, None)
        if session is None or session.sandbox_id is None:
            print(f"sandbox {args.sandbox!r} is not running")
            return
        sandbox_id = session.sandbox_id
        self.call(session.close(keep=False))
        self.keep.discard(args.sandbox)
        print(f"killed sandbox {sandbox_id}")

    def _cmd_restart(self, args: Any) -> None:
        session = self._started(args.sandbox)
        self.call(session.restart())
        print(f"restarted Python in sandbox {args.sandbox!r}; files are kept")

    def _cmd_timeout(self, args: Any) -> None:
        if args.seconds < 1:
            raise UsageError(f"%e2b timeout needs a positive number of seconds, got {args.seconds}")
        session = self._started(args.sandbox)
        self.call(session.set_timeout(args.seconds))
        print(f"sandbox {session.sandbox_id} now lives {args.seconds} s from now (kept refreshed)")

    def _cmd_upload(self, args: Any) -> None:
        session = self._started(args.sandbox)
        target, summary = self._files(
            sandbox_files.upload(session.sandbox, args.local, args.remote)
        )
        print(f"uploaded {args.local} -> {target} ({summary})")

    def _cmd_download(self, args: Any) -> None:
        session = self._started(args.sandbox)
        target, summary = self._files(
            sandbox_files.download(session.sandbox, args.remote, args.local)
        )
        print(f"downloaded {args.remote} -> {target} ({summary})")

    def _cmd_ls(self, args: Any) -> None:
        session = self._started(args.sandbox)
        for line in self._files(sandbox_files.list_dir(session.sandbox, args.path)):
            print(line)

    def _cmd_list(self, args: Any) -> None:
        from e2b_code_interpreter import AsyncSandbox

        session = self.session(args.sandbox)
        # The local backend's private service must run; no sandbox is needed just to list.
        self.call(session.start_backend())
        opts = _sdk_options(session)

        async def fetch() -> list[Any]:
            paginator = AsyncSandbox.list(**opts)
            found: list[Any] = []
            while paginator.has_next:
                found.extend(await paginator.next_items())
            return found

        sandboxes = self._files(fetch())
        mine = {s.sandbox_id: n for n, s in self.sessions.items() if s.sandbox_id}
        print(f"{len(sandboxes)} running sandbox(es):")
        for info in sandboxes:
            name = f"  [%%e2b --sandbox {mine[info.sandbox_id]}]" if info.sandbox_id in mine else ""
            meta = ", ".join(f"{k}={v}" for k, v in sorted((info.metadata or {}).items()))
            print(f"{info.sandbox_id}  {info.template_id or ''}  {meta or '-'}{name}")

    def _cmd_env(self, args: Any) -> None:
        from .magics import parse_env

        env = self.env.setdefault(args.sandbox, {})
        if not args.pairs:
            for key, value in sorted(env.items()):
                print(f"{key}={value}")
            if not env:
                print("no variables set (set one with %e2b env KEY=VALUE)")
            return
        env.update(parse_env(args.pairs, "%e2b env"))
        print(f"set {', '.join(sorted(parse_env(args.pairs)))} for later cells")

    def _cmd_keep(self, args: Any) -> None:
        session = self._started(args.sandbox)
        if session.backend == "local":
            print("note: the local backend's private service stops with Python; the sandbox dies")
        self.keep.add(args.sandbox)
        print(f"sandbox {session.sandbox_id} will be kept at exit (%e2b connect ID reattaches)")

    def _files(self, coro: Any) -> Any:
        """Run a file operation; SDK and copy errors become one readable line."""
        try:
            return self.call(coro)
        except (sandbox_files.FileTransferError, OSError) as exc:
            raise render_short(exc) from None
        except Exception as exc:
            if type(exc).__module__.startswith("e2b"):
                raise render_short(exc) from None
            raise


def _sdk_options(session: SandboxSession) -> dict[str, Any]:
    """SDK keyword arguments (URLs, key) that reach the session's backend; never printed."""
    public = getattr(session, "sdk_opts", None)
    if callable(public):
        return dict(public())
    backend = getattr(session, "_backend", None)  # the core keeps these private so far
    if backend is not None and callable(getattr(backend, "sdk_opts", None)):
        return dict(backend.sdk_opts())
    return dict(session._connection_opts())  # type: ignore[attr-defined]


def _time_left(end_at: str | None) -> str:
    if not end_at:
        return "-"
    try:
        end = dt.datetime.fromisoformat(end_at)
    except ValueError:
        return end_at
    if end.tzinfo is None:
        end = end.replace(tzinfo=dt.timezone.utc)
    seconds = int((end - dt.datetime.now(dt.timezone.utc)).total_seconds())
    return f"{max(seconds, 0)} s (until {end_at}; refreshed while the kernel runs)"
