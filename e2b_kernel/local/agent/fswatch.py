"""inotify through ctypes: directory watches that report envd's event kinds.

Standard library only (the agent runs without site-packages). One ``Inotify`` per watch
request; with ``recursive`` every directory below the root gets its own watch, and directories
created or moved in later are added as their events arrive.
"""

from __future__ import annotations

import ctypes
import errno
import os
import posixpath
import struct
from collections.abc import Iterator

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_MASK = IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (struct inotify_event)

# The kinds as envd reports them (it uses fsnotify, whose mapping this follows): a move is a
# "rename" of the old name and a "create" of the new one.
_KINDS = (
    (IN_CREATE | IN_MOVED_TO, "create"),
    (IN_MODIFY, "write"),
    (IN_DELETE | IN_DELETE_SELF, "remove"),
    (IN_MOVED_FROM | IN_MOVE_SELF, "rename"),
    (IN_ATTRIB, "chmod"),
)

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str, path: str = "") -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}", path or None)
    return result


class Inotify:
    """The watches of one directory (and, if recursive, of every directory below it)."""

    def __init__(self, root: str, *, recursive: bool) -> None:
        self.root = root
        self.recursive = recursive
        self.fd = _check(_libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1")
        self._dirs: dict[int, str] = {}  # watch descriptor -> path relative to the root
        try:
            self._add(root, "", only_dir=True)
            if recursive:
                self._add_below(root, "")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Drop every watch (closing the inotify fd does it at once)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _add(self, path: str, relative: str, *, only_dir: bool = False) -> None:
        mask = _MASK | (IN_ONLYDIR if only_dir else 0)
        wd = _check(_libc.inotify_add_watch(self.fd, os.fsencode(path), mask), "watch", path)
        self._dirs[wd] = relative

    def _add_below(self, path: str, relative: str, found: list[str] | None = None) -> None:
        """Watch every directory below path, not following symlinks (as envd's walk).

        With ``found``, every entry met is appended to it: a directory that was created or
        moved in before its watch existed may already hold files (``mkdir -p a/b; touch
        a/b/f`` in one burst), and their events happened where nobody watched. The walk keeps
        its own stack: sandbox code can nest directories deeper than Python recurses.
        """
        stack = [_sorted_children(path, relative)]
        while stack:
            item = next(stack[-1], None)
            if item is None:
                stack.pop()
                continue
            child_path, child_relative, is_dir = item
            if found is not None:
                found.append(child_relative)
            if not is_dir:
                continue
            try:
                self._add(child_path, child_relative, only_dir=True)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.ENAMETOOLONG):
                    continue
                raise
            stack.append(_sorted_children(child_path, child_relative))

    def read(self) -> list[tuple[str, str]]:
        """Pending events as (name relative to the root, kind); [] when none are queued."""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        events: list[tuple[str, str]] = []
        offset = 0
        while offset + _HEADER.size <= len(data):
            wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
            offset += _HEADER.size
            raw_name = data[offset : offset + length].rstrip(b"\0")
            offset += length
            if mask & IN_IGNORED:
                self._dirs.pop(wd, None)
                continue
            if mask & IN_Q_OVERFLOW or wd not in self._dirs:
                continue
            base = self._dirs[wd]
            name = os.fsdecode(raw_name)
            # The watched folder itself is "." (envd: filepath.Rel(root, root)).
            relative = posixpath.join(base, name) if name else (base or ".")
            if mask & (IN_DELETE_SELF | IN_MOVE_SELF) and base:
                continue  # a subdirectory's own removal was reported by its parent already
            for bits, kind in _KINDS:
                if mask & bits:
                    events.append((relative, kind))
            if self.recursive and mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
                events += self._watch_new_dir(relative)
        return events

    def _watch_new_dir(self, relative: str) -> list[tuple[str, str]]:
        """Watch a directory that just appeared, and report what it already holds as
        created: those entries were made before the watch existed, so the kernel will
        never tell us about them."""
        full = os.path.join(self.root, relative)
        found: list[str] = []
        try:
            self._add(full, relative, only_dir=True)
            self._add_below(full, relative, found)
        except OSError:
            return []  # removed again before we could watch it
        return [(name, "create") for name in found]


def _sorted_children(path: str, relative: str) -> Iterator[tuple[str, str, bool]]:
    """(path, path relative to the root, is a directory) of each entry of path, by name."""
    try:
        with os.scandir(path) as listing:
            children = [(c.name, c.path, c.is_dir(follow_symlinks=False)) for c in listing]
    except OSError:
        return iter(())  # vanished or unreadable meanwhile: nothing to watch there
    children.sort()
    return (
        (child_path, posixpath.join(relative, name) if relative else name, is_dir)
        for name, child_path, is_dir in children
    )
