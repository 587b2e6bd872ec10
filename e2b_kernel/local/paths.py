"""Map sandbox paths to host paths for the service's own file operations, safely.

The service (running as the host user, outside the sandbox's mount namespace) reads and
writes sandbox files for envd ``/files`` and the Filesystem RPC. It must see exactly what a
process inside sees: ``/home/user`` and ``/tmp`` are the sandbox's private writable dirs, and
everything else is the read-only host. Symlinks are therefore resolved here, in sandbox
space, one component at a time: a link in ``/home/user`` pointing at ``/etc/passwd`` resolves
to the read-only view and a write through it is refused, never performed on the host.
"""

from __future__ import annotations

import errno
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

SANDBOX_HOME = "/home/user"
_MAX_SYMLINKS = 40


@dataclass(frozen=True)
class ResolvedPath:
    """A sandbox path after symlink resolution, with its host location and writability."""

    sandbox: str
    host: Path
    writable: bool
    mount_root: Path | None = None  # the writable host dir holding it (None: read-only view)
    relative: str = ""  # path below mount_root, for no-follow opens (see safe_open)

    def require_writable(self) -> None:
        """Raise PermissionError (EROFS) unless the path lies in a writable sandbox dir."""
        if not self.writable:
            raise PermissionError(errno.EROFS, "read-only file system", self.sandbox)


class SandboxPaths:
    """The mounts of one sandbox as the service sees them."""

    def __init__(self, home: Path, tmp: Path, socket_dir: Path | None = None) -> None:
        mounts = {SANDBOX_HOME: Path(home), "/tmp": Path(tmp)}
        if socket_dir is not None:
            mounts[str(socket_dir)] = Path(socket_dir)
        # Longest prefix first, so the socket dir (under /tmp) wins over /tmp.
        self._mounts = sorted(mounts.items(), key=lambda item: -len(item[0]))

    def to_host(self, path: str, *, follow: bool = True) -> ResolvedPath:
        """Resolve a sandbox path (relative ones against /home/user) to its host location.

        ``follow=False`` leaves a final symlink unresolved (for stat, remove and rename).
        """
        if "\x00" in path:
            raise ValueError("path contains a NUL byte")
        if not path.startswith("/"):
            path = posixpath.join(SANDBOX_HOME, path)
        pending = [p for p in path.split("/") if p]
        resolved: list[str] = []
        followed = 0
        while pending:
            part = pending.pop(0)
            if part == ".":
                continue
            if part == "..":
                if resolved:
                    resolved.pop()
                continue
            candidate = [*resolved, part]
            host = self._map(candidate)[0]
            if (pending or follow) and os.path.islink(host):
                followed += 1
                if followed > _MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
                target = os.readlink(host)
                if target.startswith("/"):
                    resolved = []
                pending = [p for p in target.split("/") if p] + pending
                continue
            resolved = candidate
        host, writable = self._map(resolved)
        sandbox = "/" + "/".join(resolved)
        root, relative = self._split(sandbox)
        return ResolvedPath(sandbox, host, writable, root, relative)

    def to_sandbox(self, host: Path) -> str:
        """The sandbox path of a host path inside one of the sandbox's dirs (for listings)."""
        for sandbox_prefix, host_dir in self._mounts:
            try:
                rest = Path(host).relative_to(host_dir)
            except ValueError:
                continue
            return posixpath.normpath(posixpath.join(sandbox_prefix, str(rest)))
        return str(host)

    def _split(self, sandbox: str) -> tuple[Path | None, str]:
        for prefix, host_dir in self._mounts:
            if sandbox == prefix or sandbox.startswith(prefix + "/"):
                return host_dir, sandbox[len(prefix) :].lstrip("/")
        return None, ""

    def _map(self, parts: list[str]) -> tuple[Path, bool]:
        sandbox = "/" + "/".join(parts)
        for prefix, host_dir in self._mounts:
            if sandbox == prefix or sandbox.startswith(prefix + "/"):
                rest = sandbox[len(prefix) :].lstrip("/")
                return (host_dir / rest if rest else host_dir), True
        return Path(sandbox), False


def safe_open(
    resolved: ResolvedPath, flags: int, mode: int = 0o644, *, parents: bool = False
) -> int:
    """Open a resolved writable path without following any symlink on the host.

    Walks from the mount root with O_NOFOLLOW, so a directory swapped for a symlink by code in
    the sandbox after resolution makes the open fail instead of escaping to the host.
    ``parents=True`` creates missing parent directories on the way.
    """
    if resolved.mount_root is None:
        return os.open(resolved.host, flags | os.O_NOFOLLOW, mode)
    parts = [p for p in resolved.relative.split("/") if p]
    dir_fd = _open_parent(resolved.mount_root, parts, create=parents)
    try:
        if not parts:
            return os.dup(dir_fd) if flags & (os.O_WRONLY | os.O_RDWR) == 0 else _is_dir(resolved)
        return os.open(parts[-1], flags | os.O_NOFOLLOW, mode, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def _is_dir(resolved: ResolvedPath) -> int:
    raise IsADirectoryError(errno.EISDIR, "is a directory", resolved.sandbox)


def safe_parent(resolved: ResolvedPath, *, create: bool = False) -> tuple[int, str]:
    """Open the parent directory of a writable resolved path without following symlinks.

    Returns ``(dir_fd, name)`` for use with ``dir_fd=`` calls; the caller closes dir_fd.
    ``create=True`` makes missing parents. Refuses the mount root itself (it has no name).
    """
    resolved.require_writable()
    assert resolved.mount_root is not None
    parts = [p for p in resolved.relative.split("/") if p]
    if not parts:
        raise PermissionError(errno.EBUSY, "cannot change a sandbox mount point", resolved.sandbox)
    return _open_parent(resolved.mount_root, parts, create=create), parts[-1]


def _open_parent(mount_root: Path, parts: list[str], *, create: bool) -> int:
    """Walk from the mount root to the parent of ``parts[-1]``, one ``O_NOFOLLOW`` step at a
    time, so no symlink (planted by sandbox code) can lead the service outside the mount.

    ``create=True`` makes missing directories on the way. Returns the parent's fd (the root's
    own fd when ``parts`` is empty); the caller closes it.
    """
    dir_fd = os.open(mount_root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            if create:
                try:
                    os.mkdir(part, 0o755, dir_fd=dir_fd)
                except FileExistsError:
                    pass
            next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = next_fd
    except BaseException:
        os.close(dir_fd)
        raise
    return dir_fd
