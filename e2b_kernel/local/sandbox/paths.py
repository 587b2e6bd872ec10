"""Map sandbox paths to host paths, for isolation "none" only.

Without namespaces a sandbox's /home/user and /tmp are plain host directories, so a command's
working directory and a kernel's paths must be translated before they reach the host. File
operations never use this module: they run in the sandbox's agent (``agent/files.py``), which
inside a sandbox resolves paths in the sandbox's own view and, with isolation "none", gets
the same map at start (``--path-map``).

Symlinks are resolved here in sandbox space, one component at a time, so a translated path
never escapes the mapped dirs by a link's literal host meaning.
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
    writable: bool  # inside one of the sandbox's own dirs (everything else is the host)

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
        return ResolvedPath("/" + "/".join(resolved), host, writable)

    def to_sandbox(self, host: Path) -> str:
        """The sandbox path of a host path inside one of the sandbox's dirs (for listings)."""
        for sandbox_prefix, host_dir in self._mounts:
            try:
                rest = Path(host).relative_to(host_dir)
            except ValueError:
                continue
            return posixpath.normpath(posixpath.join(sandbox_prefix, str(rest)))
        return str(host)

    def _map(self, parts: list[str]) -> tuple[Path, bool]:
        sandbox = "/" + "/".join(parts)
        for prefix, host_dir in self._mounts:
            if sandbox == prefix or sandbox.startswith(prefix + "/"):
                rest = sandbox[len(prefix) :].lstrip("/")
                return (host_dir / rest if rest else host_dir), True
        return Path(sandbox), False
