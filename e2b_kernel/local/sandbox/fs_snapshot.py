"""Filesystem snapshots of a sandbox, made and restored INSIDE the sandbox.

A snapshot is a tar of /home/user and /tmp. The service never walks sandbox files itself (a
symlink there could point anywhere on the host): the agent starts a small Python process in
the sandbox that writes the tar to a file descriptor the service opened in its own state dir,
and a new sandbox's agent starts one that reads it back. What one machine cannot do is kept
out: memory and running processes are not in a snapshot (see docs/local-service.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .process import DEVNULL, PIPE, AgentProcess

if TYPE_CHECKING:
    from .runtime import LocalSandbox

log = logging.getLogger("e2b_kernel.local")

_MIB = 1024 * 1024
_UNBOUNDED = 1 << 62
ARCHIVE_TIMEOUT = 600.0  # a 2 GiB disk takes well under a minute on a small machine
_STDERR_TAIL = 4096
_STDERR_DRAIN = 2.0  # for the last words of an archiver that exited

# Run with `python -I -S`: stdlib only. argv: mode, then (prefix, dir) pairs.
# Sockets are skipped (tar has no type for them); restore uses the "tar" filter, which
# refuses absolute names, ".." and links that leave the target dir. Files keep their user.*
# extended attributes (E2B's file metadata) and hard links stay links.
_SCRIPT = r"""
import os, sys, tarfile
mode, pairs = sys.argv[1], sys.argv[2:]
roots = list(zip(pairs[::2], pairs[1::2]))
XATTR = "SCHILY.xattr."  # how GNU tar and others keep extended attributes in PAX headers

def add(tar, path, arc):
    info = tar.gettarinfo(path, arcname=arc)
    if info is None:
        return  # a socket: tar cannot hold one
    try:  # file metadata (user.e2b.*) lives in extended attributes: kept with the file
        for name in os.listxattr(path, follow_symlinks=False):
            if name.startswith("user."):
                value = os.getxattr(path, name, follow_symlinks=False)
                info.pax_headers[XATTR + name] = value.decode("utf-8", "surrogateescape")
    except OSError:
        pass
    if info.isreg():
        with open(path, "rb") as data:
            tar.addfile(info, data)
    else:
        tar.addfile(info)

def place(name):
    for prefix, root in roots:
        if name == prefix or name.startswith(prefix + "/"):
            return root, name[len(prefix):].lstrip("/") or "."
    return None

if mode == "archive":
    with tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for prefix, root in roots:
            device = os.lstat(root).st_dev
            for top, dirs, files in os.walk(root):
                # Only the sandbox's own disk: never a mount inside it (the read-only Python
                # environment is bound at its host path, which may lie under /tmp).
                dirs[:] = [
                    d for d in dirs
                    if os.path.islink(os.path.join(top, d))
                    or os.lstat(os.path.join(top, d)).st_dev == device
                ]
                rel = os.path.relpath(top, root)
                for name in [None, *sorted(dirs), *sorted(files)]:
                    path = top if name is None else os.path.join(top, name)
                    if name is not None and name in dirs and not os.path.islink(path):
                        continue  # a directory is added when the walk enters it
                    arc = os.path.normpath(os.path.join(prefix, rel, name or ""))
                    try:
                        add(tar, path, arc)
                    except OSError as exc:  # unreadable for the user: left out, said so
                        print(f"skipped {path}: {exc.strerror}", file=sys.stderr)
else:
    with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as tar:
        for member in tar:
            where = place(member.name)
            if where is None or where[1] == ".":
                continue  # the roots themselves already exist, with their own modes
            root, member.name = where
            if member.islnk():  # a hard link names its target as archived
                target = place(member.linkname)
                if target is None or target[0] != root:  # /home/user and /tmp: two disks
                    print(f"skipped {member.name}: a link across disks", file=sys.stderr)
                    continue
                member.linkname = target[1]
            tar.extract(member, root, filter="tar")
            path = os.path.join(root, member.name)
            for key, value in member.pax_headers.items():
                if key.startswith(XATTR + "user."):
                    value = value.encode("utf-8", "surrogateescape")
                    try:
                        os.setxattr(path, key[len(XATTR):], value, follow_symlinks=False)
                    except OSError:
                        pass  # a link cannot hold user attributes; a full disk refuses them
"""


class SnapshotError(RuntimeError):
    """Archiving or restoring a sandbox's files failed."""


def _roots(sandbox: LocalSandbox) -> list[str]:
    """(tar prefix, dir as the sandbox's processes see it) pairs, flattened for argv."""
    if sandbox.isolated:
        return ["home", "/home/user", "tmp", "/tmp"]
    return ["home", str(sandbox.home_dir), "tmp", str(sandbox.tmp_dir)]


def size_limit(sandbox: LocalSandbox) -> int:
    """The most bytes one snapshot of the sandbox may take on the host's disk.

    Twice its disk cap, plus room for tar's headers: tar stores a sparse file in full, so
    without a bound a file made with ``truncate -s 100T`` on the capped disk (it costs nothing
    there) would fill the host's disk when the sandbox's owner takes a snapshot or forks.
    Without a capped disk (a service that is not root, or no isolation) the sandbox writes to
    the host's disk directly anyway, and its files may be larger than any cap: no bound.
    """
    if not sandbox.disk_capped:
        return _UNBOUNDED
    return 2 * sandbox.disk_mb * _MIB + 64 * _MIB


async def archive(sandbox: LocalSandbox, target: Path) -> int:
    """Write a tar of the sandbox's /home/user and /tmp to target; return its size.

    The tar is made by a process inside the sandbox, as its user (inside root has no
    capabilities, so it could read no more); what the user cannot read is left out. It
    writes into a pipe, never into the host file: a thread of its own copies what arrives, up
    to :func:`size_limit`, and what sandbox code might write into that pipe counts too. Sandbox
    code can also stop the archiver or hold its pipes open: after :data:`ARCHIVE_TIMEOUT` it
    is killed and the snapshot fails.
    """
    limit = size_limit(sandbox)
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    stop_read, stop_write = os.pipe2(os.O_CLOEXEC)
    out = -1
    copier: _Copier | None = None
    proc: AgentProcess | None = None
    try:
        out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        copier = _Copier(read_end, out, stop_read, limit)
        try:
            proc = await _spawn(sandbox, ["archive", *_roots(sandbox)], DEVNULL, write_end, "user")
        finally:
            os.close(write_end)  # the archiver has it now: EOF once it exits
            write_end = -1
        exited = asyncio.ensure_future(_finish(proc, "archive"))
        try:
            either: list[asyncio.Future[Any]] = [copier.done, exited]
            done, _ = await asyncio.wait(
                either, timeout=ARCHIVE_TIMEOUT, return_when="FIRST_COMPLETED"
            )
            if not done:
                raise SnapshotError(
                    f"the archive of the sandbox's files did not end within "
                    f"{ARCHIVE_TIMEOUT:.0f} s (is a process in the sandbox stopping it?)"
                )
            if copier.done.done() and copier.done.result() > limit:
                raise SnapshotError(
                    f"the snapshot would be larger than {limit // _MIB} MiB, twice the "
                    "sandbox's disk cap (tar stores sparse files in full): remove large "
                    "sparse files first"
                )
            await asyncio.wait_for(asyncio.shield(exited), ARCHIVE_TIMEOUT)
        except BaseException:
            proc.kill()  # it may wait on a pipe nobody reads any more
            exited.cancel()
            raise
        os.write(stop_write, b"x")  # the archiver is done: take what it left in the pipe
        copied = await copier.done
        if copied > limit:
            raise SnapshotError(f"the snapshot would be larger than {limit // _MIB} MiB")
        return copied
    except asyncio.TimeoutError:
        raise SnapshotError(
            f"the archiver did not exit within {ARCHIVE_TIMEOUT:.0f} s after its archive"
        ) from None
    finally:
        if copier is not None:  # let it stop before its fds close (they could be reused)
            os.write(stop_write, b"x")
            with contextlib.suppress(Exception):  # bounded: EAGAIN or past the limit ends it
                await asyncio.shield(copier.done)
        for fd in (read_end, write_end, stop_read, stop_write, out):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


class _Copier(threading.Thread):
    """Moves bytes from the pipe ``source`` into ``target`` until EOF, until ``stop`` is
    readable and the pipe is drained, or until more than ``limit`` have come (the count in
    ``done`` is then over it). A thread of its own, not the shared pool: sandbox code decides
    how long it runs. splice keeps the bytes in the kernel."""

    def __init__(self, source: int, target: int, stop: int, limit: int) -> None:
        super().__init__(name="e2b-snapshot-copy", daemon=True)
        self._fds = (source, target, stop)
        self._limit = limit
        self._loop = asyncio.get_running_loop()
        self.done: asyncio.Future[int] = self._loop.create_future()
        self.start()

    def run(self) -> None:
        try:
            result: int | BaseException = self._copy()
        except BaseException as exc:
            result = exc
        self._loop.call_soon_threadsafe(self._settle, result)

    def _settle(self, result: int | BaseException) -> None:
        if self.done.done():
            return
        if isinstance(result, BaseException):
            self.done.set_exception(result)
        else:
            self.done.set_result(result)

    def _copy(self) -> int:
        source, target, stop = self._fds
        os.set_blocking(source, False)
        waiting = select.poll()  # not select(): fd numbers may be over 1023
        waiting.register(source, select.POLLIN)
        waiting.register(stop, select.POLLIN)
        copied, stopping = 0, False
        while copied <= self._limit:
            if not stopping:
                stopping = any(fd == stop for fd, _ in waiting.poll())
            try:
                moved = os.splice(source, target, _MIB)
            except BlockingIOError:
                if stopping:
                    return copied  # drained: whatever still holds the pipe is not the archiver
                continue
            if moved == 0:
                return copied
            copied += moved
        return copied


async def restore(sandbox: LocalSandbox, source: Path) -> None:
    """Unpack a snapshot into a (fresh) sandbox, inside it.

    It runs as the sandbox's user: without CAP_CHOWN nobody inside could give files back to
    another owner, and /home/user is the user's. Files that were root's come back as the
    user's (documented).
    """
    fd = await asyncio.to_thread(os.open, source, os.O_RDONLY)
    try:
        await _run(sandbox, ["restore", *_roots(sandbox)], stdin=fd, stdout=DEVNULL, user="user")
    finally:
        os.close(fd)


async def _run(
    sandbox: LocalSandbox, args: list[str], *, stdin: int, stdout: int, user: str
) -> None:
    await _finish(await _spawn(sandbox, args, stdin, stdout, user), args[0])


async def _spawn(
    sandbox: LocalSandbox, args: list[str], stdin: int, stdout: int, user: str
) -> AgentProcess:
    argv = [sandbox.python, "-I", "-S", "-c", _SCRIPT, *args]
    env = sandbox.base_env(user)
    return await sandbox.spawn(
        argv, env=env, cwd="/", stdin=stdin, stdout=stdout, stderr=PIPE, user=user
    )


async def _finish(proc: AgentProcess, what: str) -> None:
    """Wait for the process's exit (not for its stderr's end: sandbox code can hold that pipe
    open) and raise with the tail of what it wrote there if it failed."""
    assert proc.stderr is not None
    tail = bytearray()
    reader = asyncio.ensure_future(_keep_tail(proc.stderr, tail))
    try:
        code = await proc.wait()
        # What it wrote before exiting is in the pipe already: take it, unless the pipe is
        # held open by another process (then the tail so far will do).
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(reader), _STDERR_DRAIN)
    finally:
        reader.cancel()
    if code != 0:
        text = tail.decode(errors="replace").strip()[-1000:]
        raise SnapshotError(f"{what} of the sandbox's files failed ({code}): {text}")


async def _keep_tail(stream: asyncio.StreamReader, tail: bytearray) -> None:
    while chunk := await stream.read(65536):
        tail += chunk
        del tail[:-_STDERR_TAIL]


def drop_processes(sandbox: LocalSandbox) -> None:
    """SIGKILL every process of the sandbox but its agent (and bwrap's init above it).

    What a filesystem-only pause or a reboot-on-resume leaves: files, and no processes. Only
    the agent is kept, found as pid 2 of the namespace: every orphan is a child of init too
    (``setsid cmd &``), and must go. Processes forked meanwhile are found by the next round.
    Its network (slirp4netns, a host process in its cgroups) stays, as a VM's network does.
    """
    kept = (sandbox.agent_pid, sandbox.init_pid, sandbox.network_pid)
    keep = {pid for pid in kept if pid is not None}
    if sandbox.init_pid is not None:
        keep |= {pid for pid in _children(sandbox.init_pid) if _namespace_pid(pid) == 2}
    killed: set[int] = set()
    for _ in range(_KILL_ROUNDS):
        victims = set(sandbox.live_pids()) - keep - killed
        if not victims:
            return
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        killed |= victims
    log.error("sandbox %s: processes kept forking while they were ended", sandbox.sandbox_id)


_KILL_ROUNDS = 1000


def _namespace_pid(pid: int) -> int | None:
    """The pid of host process ``pid`` in its innermost pid namespace."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    return None


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]
