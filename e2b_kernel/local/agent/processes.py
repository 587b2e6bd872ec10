"""Process ops: start a command as a sandbox user, report its exit, signal it.

``spawn`` receives the child's stdin, stdout and stderr as file descriptors (host pipes or a
pty slave), so the service keeps ordinary pipe ends. The child leads a new session (so its
whole tree can be signalled as one group), changes directory here, inside the sandbox, and
when the agent switches users it runs through ``setpriv``, which sets the uid and clears the
inheritable and bounding capability sets: a command gets uid 1000 (or 0 for ``user="root"``)
with no capability at all, while only the agent keeps the few it needs.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import termios
import threading

from .server import AgentError, Conn, op

USERS = {"user": 1000, "root": 0}
SETPRIV = next((p for p in ("/usr/bin/setpriv", "/bin/setpriv") if os.path.exists(p)), "setpriv")


class Settings:
    """How this agent starts commands (set once by ``__main__``)."""

    switch_user = False  # inside a sandbox: run commands as the requested user, capless
    pdeathsig = False  # on the host (isolation none): a command dies with the agent


_children: set[int] = set()  # pids this agent started and has not reaped yet
_lock = threading.Lock()


def _command(argv: list[str], user: str) -> list[str]:
    if Settings.switch_user:
        uid = str(USERS[user])
        drop = ["--reuid", uid, "--regid", uid, "--clear-groups"]
        drop += ["--inh-caps=-all", "--bounding-set=-all"]
        return [SETPRIV, *drop, "--", *argv]
    if Settings.pdeathsig:
        return [SETPRIV, "--pdeathsig", "KILL", "--", *argv]
    return argv


def _check(request: dict) -> tuple[list[str], dict[str, str], str, str, bool]:
    argv = request["argv"]
    env = request.get("env") or {}
    cwd = request.get("cwd") or "/"
    user = request.get("user") or "user"
    if not argv or not all(isinstance(a, str) and "\x00" not in a for a in argv):
        raise AgentError(errno.EINVAL, "argv must be a non-empty list of strings")
    for key, value in env.items():
        if not isinstance(value, str) or not key or "=" in key or "\x00" in key + value:
            raise AgentError(errno.EINVAL, f"invalid environment variable {key!r}")
    if user not in USERS:
        raise AgentError(errno.EINVAL, f"unknown user {user!r}")
    if not isinstance(cwd, str) or "\x00" in cwd:
        raise AgentError(errno.EINVAL, "invalid cwd")
    return argv, env, cwd, user, bool(request.get("pty"))


# The signals this agent ignores (read once: ignored dispositions do not change later).
_IGNORED_AT_START = [
    signum
    for signum in signal.valid_signals()
    if signum not in (signal.SIGKILL, signal.SIGSTOP) and signal.getsignal(signum) is signal.SIG_IGN
]


def _exec_child(command: list[str], env: dict, cwd: str, stdio: list[int], tty: bool, err: int):
    """In the forked child: set up and exec; on failure write "errno:stage" to ``err``."""
    stage = "setup"
    try:
        # An ignored disposition survives exec: Python ignores SIGPIPE and SIGXFSZ, and a
        # service started as ``nohup ... &`` hands SIGHUP, SIGINT and SIGQUIT down ignored.
        # Every command starts with the defaults, as on E2B.
        for signum in _IGNORED_AT_START:
            signal.signal(signum, signal.SIG_DFL)
        os.setsid()
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
        if tty:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        stage = "cwd"
        os.chdir(cwd)
        stage = "exec"
        os.closerange(3, err)
        os.closerange(err + 1, os.sysconf("SC_OPEN_MAX"))
        os.execvpe(command[0], command, env)
    except OSError as exc:
        os.write(err, f"{exc.errno or errno.EIO}:{stage}".encode())
    except BaseException:
        os.write(err, f"{errno.EIO}:{stage}".encode())
    os._exit(127)


@op("spawn")
def spawn(conn: Conn, request: dict) -> None:
    """Start a command; reply ``{"pid": N}``, then send ``{"exit": code}`` when it ends.

    Request: argv, env, cwd, user ("user" | "root"), pty (the stdin fd is a terminal that
    becomes the controlling tty); fds: stdin, stdout, stderr. The exit code is negative for a
    signal, as in asyncio.
    """
    argv, env, cwd, user, tty = _check(request)
    if len(conn.fds) != 3:
        raise AgentError(errno.EINVAL, "spawn needs exactly 3 fds: stdin, stdout, stderr")
    command = _command(argv, user)
    stdio, conn.fds = conn.fds, []
    err_read, err_write = os.pipe2(os.O_CLOEXEC)
    try:
        with _lock:
            pid = os.fork()
            if pid == 0:
                _exec_child(command, env, cwd, stdio, tty, err_write)
            _children.add(pid)
    finally:
        os.close(err_write)
        for fd in stdio:  # our copies: the service sees EOF only once the child closes them
            os.close(fd)
    try:
        failure = os.read(err_read, 64)
    finally:
        os.close(err_read)
    if failure:
        _reap(pid)
        number, _, stage = failure.decode(errors="replace").partition(":")
        code = int(number) if number.isdigit() else errno.EIO
        if stage == "cwd" and code in (errno.ENOENT, errno.ENOTDIR):
            raise AgentError(code, f"cwd '{cwd}' does not exist")
        if stage == "cwd":
            raise AgentError(code, f"cannot change to cwd '{cwd}': {os.strerror(code)}")
        raise AgentError(code, f"cannot start {argv[0]!r}: {os.strerror(code)}")
    try:
        conn.reply(pid=pid)
    finally:
        status = _reap(pid)
    conn.send_json({"exit": status})


def _reap(pid: int) -> int:
    """Wait for a child of ours; its exit code, negative for a signal."""
    try:
        _, status = os.waitpid(pid, 0)
    finally:
        with _lock:
            _children.discard(pid)
    return os.waitstatus_to_exitcode(status)


@op("signal")
def send_signal(conn: Conn, request: dict) -> None:
    """Signal a command this agent started, or its whole process group (``group``: true)."""
    pid = int(request["pid"])
    signum = int(request["signal"])
    if signum not in signal.valid_signals():
        raise AgentError(errno.EINVAL, f"invalid signal {signum}")
    with _lock:
        if pid not in _children:
            raise AgentError(errno.ESRCH, f"no process {pid} started by this agent")
        if request.get("group"):
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    conn.reply()
