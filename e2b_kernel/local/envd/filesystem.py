"""envd's ``filesystem.Filesystem`` Connect-RPC service, run by the sandbox's agent.

Every call goes to the agent inside the sandbox (``sandbox/file_ops.py``), which resolves paths
and symlinks in the sandbox's own view, as the requesting user. This module only translates
between protobuf messages and the agent's plain answers, and errnos into Connect codes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import errno
import secrets
from collections.abc import AsyncIterator, Iterator
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

from ..sandbox import LocalSandbox
from ..sandbox.agent_client import AgentCallError, AgentClient, AgentGone, AgentStream
from ..sandbox.file_ops import FileOps
from .go_text import errno_text
from .process import CLIENT_GONE
from .user_paths import HOMES, UnresolvablePath, resolve_user_path, unknown_user

USERS = tuple(HOMES)  # the users a sandbox has
_KEEPALIVE = 50.0  # envd's keepalive interval on WatchDir
_MAX_PENDING_EVENTS = 10_000  # a polled watcher nobody drains keeps at most this many
# ... and at most this many bytes of names, paths and file metadata; so does a listing hold
# in metadata. The agent bounds one entry's metadata (16 KiB), not how many entries carry it.
_MAX_PENDING_BYTES = 16 << 20
_MAX_LISTING_METADATA = 16 << 20
_FILE_TYPES = {"file": FileType.FILE, "dir": FileType.DIRECTORY}
_EVENT_TYPES = {
    "create": EventType.CREATE,
    "write": EventType.WRITE,
    "remove": EventType.REMOVE,
    "rename": EventType.RENAME,
    "chmod": EventType.CHMOD,
}


def user_from_authorization(header: str | None) -> str:
    """The user of envd's ``Authorization: Basic base64("name:")`` header (default "user")."""
    if not header:
        return "user"
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return "user"
    try:
        name = base64.b64decode(value.strip(), validate=True).decode().partition(":")[0]
    except (binascii.Error, UnicodeDecodeError):
        raise ConnectError(Code.UNAUTHENTICATED, "malformed Authorization header") from None
    return check_user(name or "user", Code.UNAUTHENTICATED)


def check_user(name: str, code: Any) -> str:
    if name not in USERS:
        raise ConnectError(code, unknown_user(name))
    return name


def entry_message(entry: dict[str, Any]) -> EntryInfo:
    """EntryInfo from the agent's entry fields."""
    seconds, nanos = divmod(int(entry["mtime_ns"]), 1_000_000_000)
    return EntryInfo(
        name=entry["name"],
        type=_FILE_TYPES.get(entry["type"], FileType.UNSPECIFIED),
        path=entry["path"],
        size=int(entry["size"]),
        mode=int(entry["mode"]),
        permissions=entry["permissions"],
        owner=entry["owner"],
        group=entry["group"],
        modified_time=Timestamp(seconds=seconds, nanos=nanos),
        symlink_target=entry.get("symlink_target"),
        is_symlink=bool(entry.get("is_symlink")),
        metadata=dict(entry.get("metadata") or {}),
    )


def _rpc_error(path: str, exc: OSError) -> ConnectError:
    code = exc.errno
    if isinstance(exc, AgentGone):
        return ConnectError(Code.UNAVAILABLE, "the sandbox is not running")
    if code == errno.ENOENT:
        return ConnectError(Code.NOT_FOUND, f"path '{path}' does not exist")
    if code == errno.EEXIST:
        return ConnectError(Code.ALREADY_EXISTS, f"path '{path}' already exists")
    if code in (errno.EROFS, errno.EACCES, errno.EPERM, errno.EBUSY):
        return ConnectError(Code.PERMISSION_DENIED, f"permission denied: '{path}' ({exc.strerror})")
    if code == errno.ENOTDIR:
        return ConnectError(Code.INVALID_ARGUMENT, f"path '{path}' is not a directory")
    if code == errno.EISDIR:
        return ConnectError(Code.INVALID_ARGUMENT, f"path '{path}' is a directory")
    if code in (errno.ELOOP, errno.EINVAL, errno.ENAMETOOLONG, errno.EXDEV):
        return ConnectError(Code.INVALID_ARGUMENT, f"invalid path '{path}': {exc.strerror}")
    if code in (errno.ENOSPC, errno.EDQUOT):
        return ConnectError(Code.RESOURCE_EXHAUSTED, "not enough disk space")
    return ConnectError(Code.INTERNAL, f"cannot access '{path}': {exc.strerror or exc}")


@contextlib.contextmanager
def _move_errors(source: str, destination: str) -> Iterator[None]:
    """envd's Move words a failed rename(2) as Go's *LinkError, naming both paths: not found,
    or an internal error (a file onto a folder is no invalid argument there). Others (the
    agent gone, a full disk) are left to _mapped."""
    try:
        yield
    except OSError as exc:
        failed = exc.errno
        if isinstance(exc, AgentGone) or failed is None or failed in (errno.ENOSPC, errno.EDQUOT):
            raise
        what = f"rename {source} {destination}: {errno_text(failed)}"
        if failed == errno.ENOENT:
            raise ConnectError(Code.NOT_FOUND, f"source file not found: {what}") from None
        raise ConnectError(Code.INTERNAL, f"error renaming: {what}") from None


@contextlib.contextmanager
def _mapped(path: str) -> Iterator[None]:
    try:
        yield
    except (OSError, ConnectionError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise _rpc_error(path, exc) from None
        raise ConnectError(Code.UNAVAILABLE, f"the sandbox agent failed: {exc}") from None


def _path(raw: str, user: str) -> str:
    """The path envd would use (``~`` and relative paths from the user's home; an empty path
    is the home itself, as envd's ExpandAndResolve makes it)."""
    try:
        return resolve_user_path(raw, user)
    except UnresolvablePath as exc:
        raise ConnectError(Code.INVALID_ARGUMENT, str(exc)) from None


class FilesystemService(filesystem_connect.Filesystem):
    """filesystem.Filesystem for one sandbox."""

    def __init__(self, sandbox: LocalSandbox) -> None:
        self.sandbox = sandbox
        self._watchers: dict[str, _PolledWatcher] = {}

    @property
    def ops(self) -> FileOps:
        agent: AgentClient = self.sandbox.agent
        return FileOps(agent)

    async def stat(self, request: Any, ctx: Any) -> Any:
        """Entry info of one path (a final symlink is described, not followed)."""
        user = _user(ctx)
        path = _path(request.path, user)
        with _mapped(path):
            entry = await self.ops.stat(path, user)
        return StatResponse(entry=entry_message(entry))

    async def list_dir(self, request: Any, ctx: Any) -> Any:
        """Entries of a directory down to `depth` levels (0 means 1), walked in the agent."""
        user = _user(ctx)
        entries: list[EntryInfo] = []
        path = _path(request.path, user)
        metadata_left = _MAX_LISTING_METADATA
        with _mapped(path):
            # Converted batch by batch as they arrive (about 8 us per entry): all at once,
            # 138,000 entries held the event loop for over a second.
            listing = self.ops.list(path, user, max(1, request.depth))
            async with contextlib.aclosing(listing) as batches:
                async for batch in batches:
                    metadata_left -= sum(_metadata_size(entry) for entry in batch)
                    if metadata_left < 0:
                        raise ConnectError(
                            Code.RESOURCE_EXHAUSTED,
                            f"the files under {path} carry more than "
                            f"{_MAX_LISTING_METADATA >> 20} MiB of metadata: list a smaller "
                            "directory or fewer levels (depth)",
                        )
                    entries.extend(entry_message(e) for e in batch)
        return ListDirResponse(entries=entries)

    async def make_dir(self, request: Any, ctx: Any) -> Any:
        """Create a directory and its parents; ALREADY_EXISTS when it is there, and
        INVALID_ARGUMENT when something else is (the SDK then raises rather than say False)."""
        user = _user(ctx)
        path = _path(request.path, user)
        with _mapped(path):
            try:
                entry = await self.ops.make_dir(path, user)
            except AgentCallError as exc:
                if exc.errno == errno.EEXIST:
                    message = f"directory already exists: {path}"
                    raise ConnectError(Code.ALREADY_EXISTS, message) from None
                if exc.errno == errno.ENOTDIR:
                    message = f"path already exists but it is not a directory: {path}"
                    raise ConnectError(Code.INVALID_ARGUMENT, message) from None
                raise
        return MakeDirResponse(entry=entry_message(entry))

    async def move(self, request: Any, ctx: Any) -> Any:
        """Rename a file or directory (the destination's parents are created)."""
        user = _user(ctx)
        source, destination = _path(request.source, user), _path(request.destination, user)
        with _mapped(source), _move_errors(source, destination):
            entry = await self.ops.rename(source, destination, user)
        return MoveResponse(entry=entry_message(entry))

    async def remove(self, request: Any, ctx: Any) -> Any:
        """Remove a file or a whole directory tree; a missing path is not an error."""
        user = _user(ctx)
        path = _path(request.path, user)
        with _mapped(path):
            await self.ops.remove(path, user)
        return RemoveResponse()

    async def _open_watch(self, request: Any, ctx: Any) -> AgentStream:
        user = _user(ctx)
        path = _path(request.path, user)
        with _mapped(path):
            return await self.ops.watch(
                path,
                user,
                recursive=request.recursive,
                entries=request.include_entry,
            )

    async def create_watcher(self, request: Any, ctx: Any) -> Any:
        """Start a polled watcher (the sync SDK's watch_dir); GetWatcherEvents drains it."""
        stream = await self._open_watch(request, ctx)
        watcher_id = secrets.token_hex(8)
        self._watchers[watcher_id] = _PolledWatcher(stream)
        return CreateWatcherResponse(watcher_id=watcher_id)

    async def get_watcher_events(self, request: Any, ctx: Any) -> Any:
        """Events since the last call for this watcher."""
        watcher = self._watchers.get(request.watcher_id)
        if watcher is None:
            raise ConnectError(Code.NOT_FOUND, f"watcher {request.watcher_id!r} not found")
        return GetWatcherEventsResponse(events=watcher.collect())

    async def remove_watcher(self, request: Any, ctx: Any) -> Any:
        """Stop a polled watcher."""
        watcher = self._watchers.pop(request.watcher_id, None)
        if watcher is None:
            raise ConnectError(Code.NOT_FOUND, f"watcher {request.watcher_id!r} not found")
        await watcher.stop()
        return RemoveWatcherResponse()

    async def watch_dir(self, request: Any, ctx: Any) -> AsyncIterator[Any]:
        """Stream the agent's inotify events, with keepalives, until the client goes."""
        stream = await self._open_watch(request, ctx)
        gone = CLIENT_GONE.get(None) or asyncio.Event()
        loop = asyncio.get_running_loop()
        # As envd's handler: the stream's deadline (Connect-Timeout-Ms; the SDK's default
        # 60 s) ends the watch.
        deadline = loop.time() + ctx.timeout_ms / 1000 if ctx.timeout_ms else None
        try:
            start = WatchDirResponse.StartEvent()
            yield WatchDirResponse(event=Oneof("start", start))  # type: ignore[arg-type]
            while not gone.is_set():
                wait = _KEEPALIVE if deadline is None else min(_KEEPALIVE, deadline - loop.time())
                if wait <= 0:
                    raise ConnectError(Code.DEADLINE_EXCEEDED, "context deadline exceeded")
                event = await _next_event(stream, gone, wait)
                if event is _KEEPALIVE_TICK:
                    if deadline is not None and loop.time() >= deadline:
                        continue  # the deadline, not a keepalive
                    keepalive = WatchDirResponse.KeepAlive()
                    yield WatchDirResponse(event=Oneof("keepalive", keepalive))  # type: ignore[arg-type]
                elif event is None:
                    return  # the sandbox is gone
                else:
                    message = Oneof("filesystem", event)
                    yield WatchDirResponse(event=message)  # type: ignore[arg-type]
        finally:
            await stream.close()  # the agent sees the hang-up and drops its watches


_KEEPALIVE_TICK: Any = object()


async def _next_event(stream: AgentStream, gone: asyncio.Event, quiet: float) -> Any:
    """The next event, _KEEPALIVE_TICK after ``quiet`` seconds without one, None at the
    agent's EOF."""
    read = asyncio.ensure_future(stream.read_json())
    stop = asyncio.ensure_future(gone.wait())
    try:
        done, _pending = await asyncio.wait(
            {read, stop}, timeout=quiet, return_when="FIRST_COMPLETED"
        )
    finally:
        stop.cancel()
    if read not in done:
        read.cancel()  # readline keeps a partial line buffered, so nothing is lost
        return None if gone.is_set() else _KEEPALIVE_TICK
    try:
        line = read.result()
    except (OSError, ValueError):
        return None
    return None if line is None else _event_message(line)


def _event_message(line: dict[str, Any]) -> FilesystemEvent:
    event = FilesystemEvent(name=line["name"], type=_EVENT_TYPES[line["type"]])
    if "entry" in line:
        event.entry = entry_message(line["entry"])
    return event


def _metadata_size(entry: dict[str, Any]) -> int:
    return sum(len(key) + len(value) for key, value in (entry.get("metadata") or {}).items())


def _event_size(line: dict[str, Any]) -> int:
    entry = line.get("entry") or {}
    return 128 + len(line["name"]) + len(entry.get("path") or "") + _metadata_size(entry)


class _PolledWatcher:
    """A watch whose events wait in memory until GetWatcherEvents collects them.

    What waits is bounded (events and bytes). Past the bound, events are dropped, and the
    collection after the one that delivers the kept events is an error that says so (as
    inotify reports its queue's overflow in the stream), then the events since come. A watch
    that broke off says so at every collection, once its last events are delivered."""

    def __init__(self, stream: AgentStream) -> None:
        self.stream = stream
        self.events: list[FilesystemEvent] = []
        self.pending_bytes = 0
        self.dropped = 0
        self.dropped_note: str | None = None  # said once, by the next collection
        self.broken: str | None = None
        self.task = asyncio.ensure_future(self._collect())

    async def _collect(self) -> None:
        try:
            while (line := await self.stream.read_json()) is not None:
                size = _event_size(line)
                full = len(self.events) >= _MAX_PENDING_EVENTS
                if full or self.pending_bytes + size > _MAX_PENDING_BYTES:
                    self.dropped += 1
                    continue
                self.pending_bytes += size
                self.events.append(_event_message(line))
        except (OSError, ValueError) as exc:
            self.broken = f"the watch stopped: {exc}; remove the watcher and create another"

    def collect(self) -> list[FilesystemEvent]:
        """The events since the last collection; ConnectError for a drop or a broken watch."""
        if self.dropped_note is not None:
            note, self.dropped_note = self.dropped_note, None
            raise ConnectError(Code.RESOURCE_EXHAUSTED, note)
        if self.broken is not None and not self.events:
            raise ConnectError(Code.UNAVAILABLE, self.broken)
        events, self.events, self.pending_bytes = self.events, [], 0
        if self.dropped:
            self.dropped_note = (
                f"{self.dropped} filesystem events were dropped: more than "
                f"{_MAX_PENDING_EVENTS} events or {_MAX_PENDING_BYTES >> 20} MiB waited between "
                "two collections; collect them more often, or use the async SDK's streaming "
                "watch_dir"
            )
            self.dropped = 0
        return events

    async def stop(self) -> None:
        self.task.cancel()
        await self.stream.close()


def _user(ctx: Any) -> str:
    return user_from_authorization(ctx.request_headers.get("authorization"))
