"""envd's ``filesystem.Filesystem`` Connect-RPC service over one sandbox's paths.

Paths are resolved in sandbox space (see paths.py); every change goes through directory file
descriptors opened without following symlinks, so code in the sandbox cannot redirect a
service-side write to the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import os
import posixpath
import pwd
import secrets
import stat
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from e2b.envd.filesystem import filesystem_connect
from e2b.envd.filesystem.filesystem_pb import (
    CreateWatcherResponse,
    EntryInfo,
    EventType,
    FilesystemEvent,
    FileType,
    GetWatcherEventsResponse,
    ListDirResponse,
    MakeDirResponse,
    MoveResponse,
    RemoveResponse,
    RemoveWatcherResponse,
    StatResponse,
    WatchDirResponse,
)
from protobuf import Oneof
from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from .paths import SANDBOX_HOME, ResolvedPath, safe_parent
from .sandbox import LocalSandbox

_WATCH_POLL = 0.2


def _normalise(path: str) -> str:
    if not path:
        raise ConnectError(Code.INVALID_ARGUMENT, "path is required")
    return posixpath.normpath(posixpath.join(SANDBOX_HOME, path))


def _rpc_error(path: str, exc: OSError) -> ConnectError:
    if isinstance(exc, FileNotFoundError):
        return ConnectError(Code.NOT_FOUND, f"path '{path}' does not exist")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.EBUSY):
        return ConnectError(Code.PERMISSION_DENIED, f"permission denied: '{path}' is read-only")
    if exc.errno == errno.ENOTDIR:
        return ConnectError(Code.INVALID_ARGUMENT, f"path '{path}' is not a directory")
    if exc.errno == errno.ELOOP:
        return ConnectError(Code.INVALID_ARGUMENT, f"too many symlinks resolving '{path}'")
    return ConnectError(Code.INTERNAL, f"cannot access '{path}': {exc.strerror or exc}")


class FilesystemService(filesystem_connect.Filesystem):
    """filesystem.Filesystem for one sandbox."""

    def __init__(self, sandbox: LocalSandbox) -> None:
        self.sandbox = sandbox
        self._watchers: dict[str, _Watcher] = {}

    def _resolve(self, path: str, *, follow: bool) -> ResolvedPath:
        try:
            return self.sandbox.paths.to_host(path, follow=follow)
        except (OSError, ValueError) as exc:
            raise ConnectError(Code.INVALID_ARGUMENT, f"invalid path '{path}': {exc}") from None

    def entry_info(self, path: str, host: os.PathLike[str] | str) -> EntryInfo:
        info = os.lstat(host)
        is_link = stat.S_ISLNK(info.st_mode)
        target_sandbox = None
        shown = info
        if is_link:
            resolved = self._resolve(path, follow=True)
            target_sandbox = resolved.sandbox
            with contextlib.suppress(OSError):
                shown = os.stat(resolved.host)
        kind = FileType.UNSPECIFIED
        if stat.S_ISDIR(shown.st_mode):
            kind = FileType.DIRECTORY
        elif stat.S_ISREG(shown.st_mode) or stat.S_ISLNK(shown.st_mode):
            kind = FileType.FILE
        modified = datetime.fromtimestamp(info.st_mtime, timezone.utc)
        return EntryInfo(
            name=posixpath.basename(path) or "/",
            type=kind,
            path=path,
            size=shown.st_size,
            mode=stat.S_IMODE(shown.st_mode),
            permissions=stat.filemode(shown.st_mode),
            owner=_user_name(info.st_uid),
            group=_group_name(info.st_gid),
            modified_time=Timestamp.from_datetime(modified),
            symlink_target=target_sandbox,
            is_symlink=is_link,
        )

    async def stat(self, request: Any, ctx: Any) -> Any:
        """Entry info of one path (a final symlink is described, not followed)."""
        path = _normalise(request.path)
        resolved = self._resolve(path, follow=False)
        try:
            return StatResponse(entry=self.entry_info(path, resolved.host))
        except OSError as exc:
            raise _rpc_error(path, exc) from None

    async def list_dir(self, request: Any, ctx: Any) -> Any:
        """Entries of a directory down to `depth` levels (0 means 1)."""
        path = _normalise(request.path)
        depth = max(1, request.depth)
        resolved = self._resolve(path, follow=True)
        if not os.path.exists(resolved.host):
            raise ConnectError(Code.NOT_FOUND, f"path '{path}' does not exist")
        if not os.path.isdir(resolved.host):
            raise ConnectError(Code.INVALID_ARGUMENT, f"path '{path}' is not a directory")
        entries: list[EntryInfo] = []
        try:
            self._walk(path, str(resolved.host), depth, entries)
        except OSError as exc:
            raise _rpc_error(path, exc) from None
        return ListDirResponse(entries=entries)

    def _walk(self, path: str, host: str, depth: int, out: list[EntryInfo]) -> None:
        with os.scandir(host) as listing:
            children = sorted(listing, key=lambda item: item.name)
        for child in children:
            child_path = posixpath.join(path, child.name)
            with contextlib.suppress(FileNotFoundError):
                out.append(self.entry_info(child_path, child.path))
                if depth > 1 and child.is_dir(follow_symlinks=False):
                    with contextlib.suppress(PermissionError):
                        self._walk(child_path, child.path, depth - 1, out)

    async def make_dir(self, request: Any, ctx: Any) -> Any:
        """Create a directory and its parents; ALREADY_EXISTS when it is there."""
        path = _normalise(request.path)
        resolved = self._resolve(path, follow=True)
        if os.path.lexists(resolved.host):
            raise ConnectError(Code.ALREADY_EXISTS, f"directory '{path}' already exists")
        try:
            dir_fd, name = safe_parent(resolved, create=True)
            try:
                os.mkdir(name, 0o755, dir_fd=dir_fd)
            finally:
                os.close(dir_fd)
            return MakeDirResponse(entry=self.entry_info(path, resolved.host))
        except FileExistsError:
            raise ConnectError(Code.ALREADY_EXISTS, f"directory '{path}' already exists") from None
        except OSError as exc:
            raise _rpc_error(path, exc) from None

    async def move(self, request: Any, ctx: Any) -> Any:
        """Rename a file or directory (the destination's parents are created)."""
        source, destination = _normalise(request.source), _normalise(request.destination)
        src = self._resolve(source, follow=False)
        dst = self._resolve(destination, follow=False)
        if not os.path.lexists(src.host):
            raise ConnectError(Code.NOT_FOUND, f"path '{source}' does not exist")
        try:
            src_fd, src_name = safe_parent(src)
            try:
                dst_fd, dst_name = safe_parent(dst, create=True)
                try:
                    os.rename(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
                finally:
                    os.close(dst_fd)
            finally:
                os.close(src_fd)
            return MoveResponse(entry=self.entry_info(destination, dst.host))
        except OSError as exc:
            raise _rpc_error(source, exc) from None

    async def remove(self, request: Any, ctx: Any) -> Any:
        """Remove a file or a whole directory tree; a missing path is not an error."""
        path = _normalise(request.path)
        resolved = self._resolve(path, follow=False)
        if not os.path.lexists(resolved.host):
            return RemoveResponse()
        try:
            dir_fd, name = safe_parent(resolved)
            try:
                info = os.lstat(name, dir_fd=dir_fd)
                if stat.S_ISDIR(info.st_mode):
                    await asyncio.to_thread(_remove_tree, name, dir_fd)
                else:
                    os.unlink(name, dir_fd=dir_fd)
            finally:
                os.close(dir_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _rpc_error(path, exc) from None
        return RemoveResponse()

    def _watcher(self, request: Any) -> _Watcher:
        path = _normalise(request.path)
        resolved = self._resolve(path, follow=True)
        if not os.path.isdir(resolved.host):
            raise ConnectError(Code.NOT_FOUND, f"directory '{path}' does not exist")
        return _Watcher(self, path, str(resolved.host), request.recursive, request.include_entry)

    async def create_watcher(self, request: Any, ctx: Any) -> Any:
        """Start a polled watcher (the sync SDK's watch_dir); GetWatcherEvents drains it."""
        watcher = self._watcher(request)
        watcher_id = secrets.token_hex(8)
        self._watchers[watcher_id] = watcher
        return CreateWatcherResponse(watcher_id=watcher_id)

    async def get_watcher_events(self, request: Any, ctx: Any) -> Any:
        """Events since the last call for this watcher."""
        watcher = self._watchers.get(request.watcher_id)
        if watcher is None:
            raise ConnectError(Code.NOT_FOUND, f"watcher {request.watcher_id!r} not found")
        return GetWatcherEventsResponse(events=watcher.poll())

    async def remove_watcher(self, request: Any, ctx: Any) -> Any:
        """Stop a polled watcher."""
        if self._watchers.pop(request.watcher_id, None) is None:
            raise ConnectError(Code.NOT_FOUND, f"watcher {request.watcher_id!r} not found")
        return RemoveWatcherResponse()

    async def watch_dir(self, request: Any, ctx: Any) -> AsyncIterator[Any]:
        """Stream create/write/remove events of a directory (by polling snapshots)."""
        watcher = self._watcher(request)
        start = WatchDirResponse.StartEvent()
        yield WatchDirResponse(event=Oneof("start", start))  # type: ignore[arg-type]
        while not self.sandbox.killed.is_set():
            await asyncio.sleep(_WATCH_POLL)  # a poll interval, not a stand-in for a condition
            for event in watcher.poll():
                yield WatchDirResponse(event=Oneof("filesystem", event))  # type: ignore[arg-type]


class _Watcher:
    """Snapshot-diffing watcher of one directory."""

    def __init__(
        self, service: FilesystemService, path: str, host: str, recursive: bool, entries: bool
    ) -> None:
        self.service = service
        self.path = path
        self.host = host
        self.recursive = recursive
        self.entries = entries
        self.before = _snapshot(host, recursive)

    def poll(self) -> list[FilesystemEvent]:
        """Events since the previous poll."""
        after = _snapshot(self.host, self.recursive)
        events = []
        for name, kind in _diff(self.before, after):
            event = FilesystemEvent(name=name, type=kind)
            if self.entries and kind != EventType.REMOVE:
                with contextlib.suppress(OSError):
                    child = posixpath.join(self.path, name)
                    event.entry = self.service.entry_info(child, os.path.join(self.host, name))
            events.append(event)
        self.before = after
        return events


def _remove_tree(name: str, dir_fd: int) -> None:
    """Remove a directory tree below dir_fd without ever following a symlink."""
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        with os.scandir(fd) as listing:
            children = list(listing)
        for child in children:
            if child.is_dir(follow_symlinks=False):
                _remove_tree(child.name, fd)
            else:
                os.unlink(child.name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def _snapshot(root: str, recursive: bool) -> dict[str, tuple[float, int]]:
    found: dict[str, tuple[float, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):
                info = os.lstat(full)
                found[os.path.relpath(full, root)] = (info.st_mtime, info.st_size)
        if not recursive:
            break
    return found


def _diff(before: dict, after: dict) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []
    for name in sorted(after.keys() - before.keys()):
        events.append((name, EventType.CREATE))
    for name in sorted(after.keys() & before.keys()):
        if after[name] != before[name]:
            events.append((name, EventType.WRITE))
    for name in sorted(before.keys() - after.keys()):
        events.append((name, EventType.REMOVE))
    return events


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
