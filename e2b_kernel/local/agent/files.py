"""File operations of the agent, on paths as the sandbox sees them (envd's filesystem).

The agent runs inside the sandbox's mount namespace, so the kernel resolves every path and
symlink in the sandbox's own view: a link in /home/user to /etc/shadow reaches the sandbox's
masked shadow, never the host's, and a heavy walk costs only this sandbox (each request has
its own thread here).

Identity: a request names a user ("user" or "root", as envd's). The handler thread switches
its filesystem uid/gid to that user's ids (setfsuid/setfsgid are per thread), so a request
reads, writes and creates files with exactly the rights a command of that user has, and new
files belong to that user without any chown.

With isolation "none" the agent runs on the host; ``configure(roots=...)`` then maps the
sandbox's /home/user and /tmp onto its host directories, and ids are not switched.

Ops (requests carry ``path`` and ``user``; relative paths resolve against the user's home):

- ``fs.stat`` -> ``{"entry"}`` (a final symlink is described, not followed)
- ``fs.exists`` -> ``{"exists"}``
- ``fs.list`` (``depth``) -> reply, then lines ``{"entries": [...]}``, then ``{"end": true}``
- ``fs.read`` (``offset``, ``length``: a byte range, else the whole file) -> ``{"size",
  "total", "mtime_ns"}``, then exactly ``size`` raw bytes (``total``: the file's size)
- ``fs.write`` (``metadata``) -> ``{"path"}``; the client then sends frames (8-byte big-endian
  length + bytes) ending with an empty frame; the agent answers ``{"ok": true, "entry"}`` or
  ``{"ok": false, "errno", "error"}`` once every frame is in
- ``fs.mkdir`` -> ``{"entry"}`` (EEXIST: a directory is there; ENOTDIR: something else)
- ``fs.rename`` (``source``, ``destination``) -> ``{"entry"}``, ``fs.remove`` -> ``{}`` (a
  missing path is no error)
- ``fs.watch`` (``recursive``, ``entries``) -> reply, then ``{"name", "type", "entry"?}`` lines
  until the client closes the connection
- ``fs.disk_usage`` -> ``{"used", "total"}`` bytes of /home/user + /tmp
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import grp
import os
import posixpath
import pwd
import select
import shutil
import stat
import struct
from collections.abc import Iterator

from .fswatch import Inotify
from .server import AgentError, Conn, op

HOMES = {"user": "/home/user", "root": "/root"}
IDS = {"user": (1000, 1000), "root": (0, 0)}
DISK_DIRS = ("/home/user", "/tmp")
_CHUNK = 256 * 1024
_BATCH = 256  # entries per line of a listing: lines stay small however big the tree
_BATCH_BYTES = 128 * 1024  # nor does a line pass about this many bytes of paths and metadata
# File metadata (``user.e2b.*`` attributes) one entry carries. tmpfs holds any amount, while
# E2B's ext4 keeps a file's attributes in one 4 KiB block; without a bound, sandbox code could
# hang megabytes on every file and make each listing or watch event cost the service as much.
METADATA_BYTES = 16 * 1024
_FRAME = struct.Struct(">Q")

_libc = ctypes.CDLL(None, use_errno=True)


class _Config:
    """How sandbox paths meet the filesystem the agent sees (set once at agent start)."""

    roots: list[tuple[str, str]] = []  # (sandbox prefix, host dir), longest prefix first
    switch_ids: bool = False  # on only inside a sandbox (__main__ --switch-user)


def configure(*, roots: dict[str, str] | None = None, switch_ids: bool | None = None) -> None:
    """Set the path map (isolation "none": {"/home/user": dir, "/tmp": dir}) and whether
    requests switch to the user's ids (inside a sandbox; never on the host, where uid 1000 is
    somebody else)."""
    mapped = dict(roots or {})
    _Config.roots = sorted(mapped.items(), key=lambda item: -len(item[0]))
    if switch_ids is not None:
        _Config.switch_ids = switch_ids


# --- paths -------------------------------------------------------------------------------


def _user(request: dict) -> str:
    user = request.get("user") or "user"
    if user not in HOMES:
        raise AgentError(errno.EINVAL, f"unknown user {user!r}: this sandbox has user and root")
    return str(user)


def sandbox_path(raw: object, user: str = "user") -> str:
    """The absolute, normalised sandbox path (relative ones against the user's home)."""
    if not isinstance(raw, str) or not raw:
        raise AgentError(errno.EINVAL, "a path is required")
    if "\0" in raw:
        raise AgentError(errno.EINVAL, "the path contains a NUL byte")
    path = posixpath.normpath(posixpath.join(HOMES[user], raw))
    return "/" + path.lstrip("/")  # normpath keeps a leading "//"


def host_path(sandbox: str) -> str:
    """Where the agent finds a sandbox path: itself inside a sandbox, mapped without one."""
    for prefix, root in _Config.roots:
        if sandbox == prefix or sandbox.startswith(prefix + "/"):
            return root + sandbox[len(prefix) :]
    return sandbox


def _require_writable(path: str, *, follow: bool) -> None:
    """Isolation "none" only: refuse changes outside the mapped dirs, as the sandbox's
    read-only view would (inside a sandbox the mounts themselves refuse them)."""
    if not _Config.roots:
        return
    host = host_path(path)
    if follow:
        real = os.path.realpath(host)
    else:  # the entry itself may be a link: check where its parent really is
        real = os.path.join(os.path.realpath(os.path.dirname(host)), os.path.basename(host))
    for _prefix, root in _Config.roots:
        root = os.path.realpath(root)
        # The mapped dir itself can be written through (opening it gives EISDIR) but never
        # removed or renamed.
        if real.startswith(root + "/") or (follow and real == root):
            return
    raise AgentError(errno.EROFS, f"read-only file system: {path}")


def _to_sandbox(host: str) -> str:
    for prefix, root in _Config.roots:
        if host == root or host.startswith(root + "/"):
            return prefix + host[len(root) :]
    return host


@contextlib.contextmanager
def as_user(user: str) -> Iterator[None]:
    """Run the block with the user's filesystem ids on this thread only."""
    if not _Config.switch_ids:
        yield
        return
    uid, gid = IDS[user]
    old_uid, old_gid = _libc.setfsuid(-1), _libc.setfsgid(-1)  # -1 only reads them
    _libc.setfsgid(gid)
    _libc.setfsuid(uid)
    try:
        if _libc.setfsuid(-1) != uid or _libc.setfsgid(-1) != gid:
            raise AgentError(errno.EPERM, f"the agent cannot act as {user}")
        yield
    finally:
        _libc.setfsuid(old_uid)
        _libc.setfsgid(old_gid)


@contextlib.contextmanager
def _errors(path: str) -> Iterator[None]:
    """OSError -> AgentError naming the sandbox path (never a mapped host path)."""
    try:
        yield
    except OSError as exc:
        if exc.errno is None:
            raise
        raise AgentError(exc.errno, f"{exc.strerror or exc}: {path}") from None


# --- entry info ----------------------------------------------------------------------------


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name  # the sandbox's own /etc/passwd
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def entry_info(path: str) -> dict:
    """envd's EntryInfo of a sandbox path; a final symlink is described with its target."""
    host = host_path(path)
    info = os.lstat(host)
    shown = info
    target = None
    is_link = stat.S_ISLNK(info.st_mode)
    if is_link:
        target = _to_sandbox(os.path.realpath(host))
        with contextlib.suppress(OSError):
            shown = os.stat(host)
    if stat.S_ISDIR(shown.st_mode):
        kind = "dir"
    elif stat.S_ISREG(shown.st_mode) or stat.S_ISLNK(shown.st_mode):
        kind = "file"  # a dangling link is a file, as envd reports it
    else:
        kind = ""  # fifos, sockets, devices: envd's FILE_TYPE_UNSPECIFIED
    return {
        "name": posixpath.basename(path) or "/",
        "type": kind,
        "path": path,
        "size": shown.st_size,
        "mode": stat.S_IMODE(shown.st_mode),
        "permissions": stat.filemode(shown.st_mode),
        "owner": _owner(info.st_uid),
        "group": _group(info.st_gid),
        "mtime_ns": info.st_mtime_ns,
        "symlink_target": target,
        "is_symlink": is_link,
        "metadata": _metadata(host),
    }


_XATTR_PREFIX = "user.e2b."


def _metadata(host: str) -> dict[str, str]:
    """The file's ``user.e2b.*`` extended attributes, as envd surfaces them (keys without the
    prefix). They live on the inode, so a rename keeps them; a link shows its own (none)."""
    try:
        names = os.listxattr(host, follow_symlinks=False)
    except OSError:
        return {}  # a filesystem without xattrs, or a race with a removal: no metadata
    found = {}
    room = METADATA_BYTES
    for name in sorted(names):
        if name.startswith(_XATTR_PREFIX):
            with contextlib.suppress(OSError):
                raw = os.getxattr(host, name, follow_symlinks=False)
                key = name[len(_XATTR_PREFIX) :]
                room -= len(key) + len(raw)
                if room < 0:
                    break  # past METADATA_BYTES: the entry carries the keys before this one
                found[key] = raw.decode("utf-8", "replace")
    return found


def entry_weight(entry: dict) -> int:
    """About how many bytes of JSON ``entry`` takes (its variable parts and a margin)."""
    metadata = entry["metadata"]
    size = 256 + len(entry["path"]) + len(entry["symlink_target"] or "")
    # A byte that is not UTF-8 is sent as "\\ufffd": six bytes of JSON.
    return size + sum(len(key) + len(value) for key, value in metadata.items()) * 6


# --- ops -----------------------------------------------------------------------------------


@op("fs.stat")
def stat_op(conn: Conn, request: dict) -> None:
    """Entry info of one path."""
    user = _user(request)
    path = sandbox_path(request.get("path"), user)
    with as_user(user), _errors(path):
        entry = entry_info(path)
    conn.reply(entry=entry)


@op("fs.exists")
def exists_op(conn: Conn, request: dict) -> None:
    """Whether a path exists (a dangling symlink does)."""
    user = _user(request)
    path = sandbox_path(request.get("path"), user)
    with as_user(user):
        found = os.path.lexists(host_path(path))
    conn.reply(exists=found)


@op("fs.list")
def list_op(conn: Conn, request: dict) -> None:
    """Entries down to ``depth`` levels (0 counts as 1), streamed in small batches."""
    user = _user(request)
    path = sandbox_path(request.get("path"), user)
    depth = max(1, int(request.get("depth") or 1))
    with as_user(user):
        with _errors(path):
            if not stat.S_ISDIR(os.stat(host_path(path)).st_mode):
                raise AgentError(errno.ENOTDIR, f"not a directory: {path}")
            os.close(os.open(host_path(path), os.O_RDONLY | os.O_DIRECTORY))  # readable?
        conn.reply()
        batch: list[dict] = []
        weight = 0
        for entry in _walk(path, depth):
            batch.append(entry)
            weight += entry_weight(entry)
            if len(batch) >= _BATCH or weight >= _BATCH_BYTES:
                conn.send_json({"entries": batch})
                batch, weight = [], 0
        if batch:
            conn.send_json({"entries": batch})
    conn.send_json({"end": True})


def _walk(path: str, depth: int) -> Iterator[dict]:
    """Depth-first, sorted by name; symlinked directories are listed, not entered."""
    try:
        with os.scandir(host_path(path)) as listing:
            children = sorted((c.name, c.is_dir(follow_symlinks=False)) for c in listing)
    except OSError:
        return  # unreadable or vanished below the top: skip it, as envd's walk does
    for name, is_dir in children:
        child = posixpath.join(path, name)
        try:
            yield entry_info(child)
        except OSError:
            continue
        if depth > 1 and is_dir:
            yield from _walk(child, depth - 1)


def _open_regular(path: str, flags: int, mode: int = 0o644) -> int:
    """Open a regular file; fifos and devices are refused without ever blocking on them."""
    try:
        fd = os.open(host_path(path), flags | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a fifo nobody reads
            raise AgentError(errno.ENXIO, f"not a regular file: {path}") from None
        raise
    kind = os.fstat(fd).st_mode
    if not stat.S_ISREG(kind):
        os.close(fd)
        if stat.S_ISDIR(kind):
            raise AgentError(errno.EISDIR, f"is a directory: {path}")
        raise AgentError(errno.ENXIO, f"not a regular file: {path}")
    os.set_blocking(fd, True)
    return fd


@op("fs.read")
def read_op(conn: Conn, request: dict) -> None:
    """The file's size, then exactly that many bytes (fewer only if it shrinks meanwhile:
    the connection then ends early, and the client sees a short stream)."""
    user = _user(request)
    path = sandbox_path(request.get("path"), user)
    with as_user(user), _errors(path):
        fd = _open_regular(path, os.O_RDONLY)
    with os.fdopen(fd, "rb", buffering=0) as handle:
        info = os.fstat(fd)
        offset, length = request.get("offset") or 0, request.get("length")
        if not isinstance(offset, int) or offset < 0:
            raise AgentError(errno.EINVAL, f"offset must be a byte count, not {offset!r}")
        if length is not None and (not isinstance(length, int) or length < 0):
            raise AgentError(errno.EINVAL, f"length must be a byte count, not {length!r}")
        remaining = max(0, info.st_size - offset)
        if length is not None:
            remaining = min(remaining, length)
        if offset:
            handle.seek(offset)
        conn.reply(size=remaining, total=info.st_size, mtime_ns=info.st_mtime_ns)
        while remaining > 0:
            block = handle.read(min(_CHUNK, remaining))
            if not block:
                return
            remaining -= len(block)
            conn.send_bytes(block)


@op("fs.write")
def write_op(conn: Conn, request: dict) -> None:
    """Create or truncate a file (and its parents), then stream the client's frames into it."""
    user = _user(request)
    path = sandbox_path(request.get("path"), user)
    metadata = request.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise AgentError(errno.EINVAL, "metadata must be an object of strings")
    with as_user(user), _errors(path):
        _require_writable(path, follow=True)
        _make_parents(path)
        fd = _open_regular(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    failure: AgentError | None = None
    with os.fdopen(fd, "wb", buffering=0) as handle:
        conn.reply(path=path)
        while True:
            size = _FRAME.unpack(_recv_exact(conn, _FRAME.size))[0]
            if size == 0:
                break
            data = _recv_exact(conn, size)
            if failure is None:  # after a failure keep reading so the client can finish
                try:
                    _write_all(handle, data)
                except OSError as exc:
                    failure = AgentError(exc.errno or errno.EIO, f"{exc.strerror}: {path}")
    if failure is None:
        try:
            with as_user(user), _errors(path):
                for key, value in metadata.items():
                    os.setxattr(host_path(path), f"{_XATTR_PREFIX}{key}", str(value).encode())
                entry = entry_info(path)
        except AgentError as exc:
            failure = exc
    if failure is not None:
        conn.send_json({"ok": False, "errno": failure.errno, "error": failure.message})
    else:
        conn.send_json({"ok": True, "entry": entry})


def _recv_exact(conn: Conn, size: int) -> bytes:
    parts = []
    while size > 0:
        chunk = conn.recv_bytes(min(size, _CHUNK))
        if not chunk:
            # The client gave up (its upload broke off): end quietly, the file stays short.
            raise BrokenPipeError(errno.EPIPE, "the client stopped before the end of the file")
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


def _write_all(handle: object, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = handle.write(view)  # type: ignore[attr-defined]
        view = view[written:]


def _make_parents(path: str) -> None:
    parent = posixpath.dirname(path)
    try:
        os.makedirs(host_path(parent), 0o755, exist_ok=True)
    except FileExistsError:  # a parent is a file
        raise AgentError(errno.ENOTDIR, f"a parent of {path} is not a directory") from None


@op("fs.mkdir")
def mkdir_op(conn: Conn, request: dict) -> None:
    """Create a directory and its parents; EEXIST when a directory (or a link to one) is
    already there, ENOTDIR when something else is (envd tells the two apart)."""
    user = _user(request)
    path = sandbox_path(request.get("path"), user)
    with as_user(user), _errors(path):
        if os.path.isdir(host_path(path)):
            raise AgentError(errno.EEXIST, f"directory already exists: {path}")
        if os.path.lexists(host_path(path)):
            message = f"path already exists but it is not a directory: {path}"
            raise AgentError(errno.ENOTDIR, message)
        _require_writable(path, follow=False)
        _make_parents(path)
        os.mkdir(host_path(path), 0o755)
        entry = entry_info(path)
    conn.reply(entry=entry)


@op("fs.rename")
def rename_op(conn: Conn, request: dict) -> None:
    """Move a file or directory; the destination's parents are created."""
    user = _user(request)
    source = sandbox_path(request.get("source"), user)
    destination = sandbox_path(request.get("destination"), user)
    with as_user(user), _errors(source):
        if not os.path.lexists(host_path(source)):
            raise AgentError(errno.ENOENT, f"no such file or directory: {source}")
        _require_writable(source, follow=False)
        _require_writable(destination, follow=False)
        _make_parents(destination)
        os.rename(host_path(source), host_path(destination))
        entry = entry_info(destination)
    conn.reply(entry=entry)


@op("fs.remove")
def remove_op(conn: Conn, request: dict) -> None:
    """Remove a file, link or whole tree (never following links); a missing path is fine."""
    user = _user(request)
    path = sandbox_path(request.get("path"), user)
    host = host_path(path)
    with as_user(user), _errors(path):
        if not os.path.lexists(host):
            conn.reply()
            return
        _require_writable(path, follow=False)
        try:
            if stat.S_ISDIR(os.lstat(host).st_mode):
                shutil.rmtree(host)  # fd-based on Linux: a swapped-in link is not followed
            else:
                os.unlink(host)
        except FileNotFoundError:
            pass
    conn.reply()


@op("fs.watch")
def watch_op(conn: Conn, request: dict) -> None:
    """Stream the directory's events until the client hangs up."""
    user = _user(request)
    path = sandbox_path(request.get("path"), user)
    recursive = bool(request.get("recursive"))
    with_entries = bool(request.get("entries"))
    with as_user(user):
        with _errors(path):
            if not stat.S_ISDIR(os.stat(host_path(path)).st_mode):
                raise AgentError(errno.ENOTDIR, f"not a directory: {path}")
            watcher = Inotify(host_path(path), recursive=recursive)
        try:
            conn.reply()  # after the watches exist: every later change is reported
            poller = select.poll()
            poller.register(watcher.fd, select.POLLIN)
            # The client sends nothing more; readable or hung up means it has gone.
            poller.register(conn.sock.fileno(), select.POLLIN | select.POLLRDHUP)
            while True:
                ready = dict(poller.poll())
                if conn.sock.fileno() in ready:
                    return
                for name, kind in watcher.read():
                    event: dict = {"name": name, "type": kind}
                    if with_entries and kind != "remove":
                        with contextlib.suppress(OSError):
                            event["entry"] = entry_info(posixpath.join(path, name))
                    conn.send_json(event)
        finally:
            watcher.close()


@op("fs.disk_usage")
def disk_usage_op(conn: Conn, request: dict) -> None:
    """Bytes used in /home/user + /tmp and the size of the disk holding /home/user."""
    dirs = [host_path(d) for d in DISK_DIRS]
    counted_devices: set[int] = set()
    used = 0
    for directory in dirs:
        try:
            device = os.stat(directory).st_dev
        except OSError:
            continue
        if device in counted_devices:
            continue
        if _is_own_filesystem(directory):
            # The sandbox's own disk (a tmpfs with the cap): the filesystem's count is exact
            # and free; walking it could not see the user's private folders anyway.
            counted_devices.add(device)
            fs = os.statvfs(directory)
            used += (fs.f_blocks - fs.f_bfree) * fs.f_frsize
        else:
            used += _tree_size(directory)
    home = os.statvfs(dirs[0])
    conn.reply(used=used, total=home.f_blocks * home.f_frsize)


def _is_own_filesystem(directory: str) -> bool:
    """Whether the mount holding directory is a tmpfs (the per-sandbox disk)."""
    if _Config.roots:
        return False  # isolation "none": host dirs, possibly on a shared host tmpfs
    best, fstype = "", ""
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            fields = line.split(" - ", 1)
            head, tail = fields[0].split(), fields[1].split() if len(fields) > 1 else []
            point = head[4].encode().decode("unicode_escape") if len(head) > 4 else ""
            inside = directory == point or directory.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best) and tail:
                best, fstype = point, tail[0]
    return fstype == "tmpfs"


def _tree_size(root: str) -> int:
    total = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            with contextlib.suppress(OSError):
                info = os.lstat(os.path.join(dirpath, name))
                if (info.st_dev, info.st_ino) not in seen:
                    seen.add((info.st_dev, info.st_ino))
                    total += info.st_size
    return total
