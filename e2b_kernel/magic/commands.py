"""The ``%e2b COMMAND`` line commands: one table gives the parser, the help and the handlers.

``COMMANDS`` lists every command once, with its arguments and a one-line description;
:func:`build_parser` and :data:`HELP` (the ``%e2b?`` text) are both made from it, and
``CommandsMixin`` implements ``_cmd_<name>`` for each.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import MagicArgumentParser

from . import files
from .arguments import parse_env, parse_line, sandbox_name

if TYPE_CHECKING:
    from ..core import SandboxSession
    from .loop_thread import LoopThread
    from .transport import Transports

__all__ = ["COMMANDS", "HELP", "CommandsMixin", "build_parser"]


@dataclass(frozen=True)
class Command:
    """One ``%e2b`` command: its name, its positional arguments and what it does."""

    name: str
    summary: str
    arguments: tuple[tuple[str, dict[str, Any]], ...] = field(default=())

    @property
    def usage(self) -> str:
        """``name ARG [OPTIONAL]`` as the help table shows it."""
        words = [self.name]
        for dest, spec in self.arguments:
            metavar = spec.get("metavar", dest.upper())
            words.append(f"[{metavar} ...]" if spec.get("nargs") == "*" else metavar)
            if spec.get("nargs") == "?":
                words[-1] = f"[{metavar}]"
        return " ".join(words)


COMMANDS: tuple[Command, ...] = (
    Command("status", "backend, isolation, sandbox id, template, transport, time left"),
    Command(
        "connect", "attach to an existing sandbox (by id)", (("sandbox_id", {"metavar": "ID"}),)
    ),
    Command("kill", "kill the sandbox now (the next cell creates a new one)"),
    Command("restart", "fresh Python state; files and packages are kept"),
    Command(
        "timeout",
        "set the sandbox's lifetime from now (kept refreshed)",
        (("seconds", {"type": int, "metavar": "SECONDS"}),),
    ),
    Command(
        "upload",
        "copy a file or folder into the sandbox",
        (("local", {"metavar": "LOCAL"}), ("remote", {"nargs": "?", "metavar": "REMOTE"})),
    ),
    Command(
        "download",
        "copy a file or folder out of the sandbox",
        (("remote", {"metavar": "REMOTE"}), ("local", {"nargs": "?", "metavar": "LOCAL"})),
    ),
    Command(
        "ls",
        "list a sandbox folder (default /home/user)",
        (("path", {"nargs": "?", "metavar": "PATH"}),),
    ),
    Command("list", "this account's running sandboxes, with metadata"),
    Command(
        "env",
        "set variables for later cells; no argument lists them",
        (("pairs", {"nargs": "*", "metavar": "KEY=VALUE"}),),
    ),
    Command("keep", "do not kill the sandbox when Python exits; print its id"),
)


def _help() -> str:
    width = max(len(command.usage) for command in COMMANDS)
    rule = f"{'=' * width} {'=' * 58}"
    rows = [f"{c.usage:<{width}} {c.summary}" for c in COMMANDS]
    return "\n".join(
        [
            "Manage the sandboxes that run ``%%e2b`` cells.",
            "",
            "Usage: ``%e2b COMMAND [ARGS] [--sandbox NAME]``",
            "",
            rule,
            f"{'command':<{width}} does",
            rule,
            *rows,
            rule,
            "",
            "Relative sandbox paths are under /home/user. ``--sandbox NAME`` picks a named sandbox",
            "(the one ``%%e2b --sandbox NAME`` uses); the default is 'default'.",
            "",
            "Examples",
            "--------",
            "::",
            "",
            "    %e2b status",
            "    %e2b upload data/ data",
            "    %e2b download results/report.csv .",
            "    %e2b env OPENAI_BASE_URL=http://localhost:8000",
            "    %e2b timeout 3600 --sandbox scratch",
        ]
    )


HELP = _help()


def build_parser() -> MagicArgumentParser:
    """The ``%e2b`` parser: one subcommand per entry of ``COMMANDS``; errors are UsageErrors."""
    parser = MagicArgumentParser(prog="%e2b", description="Manage %%e2b sandboxes.")
    common = MagicArgumentParser(add_help=False)
    common.add_argument(
        "--sandbox", default="default", type=sandbox_name, metavar="NAME", help="named sandbox"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=MagicArgumentParser)
    sub.required = True
    for command in COMMANDS:
        subparser = sub.add_parser(
            command.name, help=command.summary, parents=[common], prog=f"%e2b {command.name}"
        )
        for dest, spec in command.arguments:
            subparser.add_argument(dest, **spec)
    return parser


class CommandsMixin:
    """Implements ``%e2b``; the host class provides sessions, the loop and ``call``."""

    loop: LoopThread
    sessions: dict[str, SandboxSession]
    env: dict[str, dict[str, str]]
    keep: set[str]
    transports: Transports
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
        args = parse_line(self._parser, line, HELP)
        if args is None:
            return None
        return getattr(self, f"_cmd_{args.command}")(args)

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
        print(f"transport:  {info.get('transport')} ({info.get('transport_reason')})")
        print(f"time left:  {left}")
        if info.get("error"):
            print(f"warning:    {info['error']}")

    def _cmd_connect(self, args: Any) -> None:
        old = self.sessions.pop(args.sandbox, None)
        self.call(self.transports.close(args.sandbox))
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
                old.release()  # the same sandbox, now driven by the new session
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
        self.call(self.transports.close(args.sandbox))
        self.call(session.close(keep=False))
        self.keep.discard(args.sandbox)
        print(f"killed sandbox {sandbox_id}")

    def _cmd_restart(self, args: Any) -> None:
        session = self.sessions.get(args.sandbox)
        if session is None or session.sandbox_id is None:  # nothing to restart: none made
            print(f"sandbox {args.sandbox!r} is not running (its first %%e2b cell starts it)")
            return
        try:
            self.call(session.restart())
        finally:
            self.call(self.transports.drop_channels(args.sandbox))
        print(f"restarted Python in sandbox {args.sandbox!r}; files are kept")

    def _cmd_timeout(self, args: Any) -> None:
        if args.seconds < 1:
            raise UsageError(f"%e2b timeout needs a positive number of seconds, got {args.seconds}")
        session = self._started(args.sandbox)
        self.call(session.set_timeout(args.seconds))
        print(f"sandbox {session.sandbox_id} now lives {args.seconds} s from now (kept refreshed)")

    def _cmd_upload(self, args: Any) -> None:
        session = self._started(args.sandbox)
        target, summary = self.call(files.upload(session, args.local, args.remote))
        print(f"uploaded {args.local} -> {target} ({summary})")

    def _cmd_download(self, args: Any) -> None:
        session = self._started(args.sandbox)
        target, summary = self.call(files.download(session, args.remote, args.local))
        print(f"downloaded {args.remote} -> {target} ({summary})")

    def _cmd_ls(self, args: Any) -> None:
        session = self._started(args.sandbox)
        for line in self.call(files.list_dir(session, args.path)):
            print(line)

    def _cmd_list(self, args: Any) -> None:
        session = self.session(args.sandbox)
        sandboxes = self.call(session.list_sandboxes())
        mine = {s.sandbox_id: n for n, s in self.sessions.items() if s.sandbox_id}
        print(f"{len(sandboxes)} running sandbox(es):")
        for info in sandboxes:
            name = f"  [%%e2b --sandbox {mine[info.sandbox_id]}]" if info.sandbox_id in mine else ""
            meta = ", ".join(f"{k}={v}" for k, v in sorted((info.metadata or {}).items()))
            print(f"{info.sandbox_id}  {info.template_id or ''}  {meta or '-'}{name}")

    def _cmd_env(self, args: Any) -> None:
        env = self.env.setdefault(args.sandbox, {})
        if not args.pairs:
            for key, value in sorted(env.items()):
                print(f"{key}={value}")
            if not env:
                print("no variables set (set one with %e2b env KEY=VALUE)")
            return
        new = parse_env(args.pairs, "%e2b env")
        env.update(new)
        print(f"set {', '.join(sorted(new))} for later cells")

    def _cmd_keep(self, args: Any) -> None:
        session = self._started(args.sandbox)
        if session.backend == "local":
            print("note: the local backend's private service stops with Python; the sandbox dies")
        self.keep.add(args.sandbox)
        print(f"sandbox {session.sandbox_id} will be kept at exit (%e2b connect ID reattaches)")


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
