"""Copy files and folders between this machine and a sandbox (``%e2b upload/download/ls``).

Everything goes through the session's file methods (the SDK's files API), so it works the same
against E2B cloud and the local service. Relative sandbox paths are relative to ``/home/user``.
"""

from __future__ import annotations

import errno
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import TransferError

if TYPE_CHECKING:
    from ..core import SandboxSession

__all__ = ["CopySummary", "download", "list_dir", "remote_path", "upload"]

REMOTE_HOME = "/home/user"  # the sandbox user's home and working directory, as on E2B


@dataclass
class CopySummary:
    """How much was copied, for the one-line report."""

    files: int = 0
    folders: int = 0
    bytes: int = 0

    def __str__(self) -> str:
        folders = f", {self.folders} folder(s)" if self.folders else ""
        return f"{self.files} file(s){folders}, {self.bytes} bytes"


def remote_path(path: str | None, default_name: str = "") -> str:
    """Absolute sandbox path: relative paths and ``~`` are under /home/user."""
    path = path or default_name
    if path == "~" or path.startswith("~/"):
        path = REMOTE_HOME + path[1:]
    return posixpath.normpath(path if path.startswith("/") else posixpath.join(REMOTE_HOME, path))


def _names_a_folder(path: str | None) -> bool:
    """A destination written as a folder (``data/``, ``~``, ``.``): the copy goes inside it."""
    if not path:
        return False
    return path.endswith(("/", "/.")) or path in ("~", ".")


async def upload(
    session: SandboxSession, local: str, remote: str | None
) -> tuple[str, CopySummary]:
    """Upload a local file or folder; return the sandbox path and what was copied."""
    source = Path(local).expanduser()
    if not source.exists():
        raise TransferError(f"upload: no such local file or folder: {local}")
    target = remote_path(remote, source.resolve().name)
    if remote and (_names_a_folder(remote) or _is_dir(await session.path_info(target))):
        target = posixpath.join(target, source.resolve().name)  # into it, as cp and scp do
    summary = CopySummary()
    if source.is_file():
        await _upload_file(session, source, target, summary)
        return target, summary
    for folder, dirnames, filenames in os.walk(source):
        dirnames.sort()
        relative = Path(folder).relative_to(source).as_posix()
        remote_folder = posixpath.normpath(posixpath.join(target, relative))
        summary.folders += 1
        if not filenames:  # writing a file creates its folders; only empty ones need make_dir
            await session.make_dir(remote_folder)
        for name in sorted(filenames):
            await _upload_file(
                session, Path(folder) / name, posixpath.join(remote_folder, name), summary
            )
    return target, summary


async def _upload_file(
    session: SandboxSession, source: Path, target: str, summary: CopySummary
) -> None:
    with source.open("rb") as stream:
        await session.write_file(target, stream)
    summary.files += 1
    summary.bytes += source.stat().st_size


async def download(
    session: SandboxSession, remote: str, local: str | None
) -> tuple[Path, CopySummary]:
    """Download a sandbox file or folder; return the local path and what was copied."""
    source = remote_path(remote)
    info = await session.path_info(source)
    if info is None:
        raise TransferError(f"download: no such file or folder in the sandbox: {source}")
    name = posixpath.basename(source) or "download"
    target = Path(local).expanduser() if local else Path(name)
    if _names_a_folder(local) or (target.is_dir() and (local or not _is_dir(info))):
        target = target / name  # into it, as cp and scp do (a folder named as the file too)
    summary = CopySummary()
    try:
        if _is_dir(info):
            await _download_folder(session, source, target, summary)
        else:
            await _download_file(session, source, target, summary)
    except OSError as exc:  # of this machine's file system (the sandbox's are SDK errors)
        raise _cannot_write(target, exc) from None
    return target, summary


def _cannot_write(target: Path, exc: OSError) -> TransferError:
    """The local write's failure, naming what is in the way and what to do."""
    where = Path(exc.filename) if exc.filename else target
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        in_the_way = next((p for p in (where, *where.parents) if p.is_file()), None)
        if in_the_way is not None:
            return TransferError(
                f"download: cannot write {target}: {in_the_way} is a file, not a folder. "
                "Give another local path, or move that file away."
            )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return TransferError(
            f"download: no permission to write {where} ({exc.strerror}). "
            "Give a local path in a folder you can write to."
        )
    return TransferError(f"download: cannot write {where}: {exc.strerror or exc}")


async def _download_folder(
    session: SandboxSession, source: str, target: Path, summary: CopySummary
) -> None:
    target.mkdir(parents=True, exist_ok=True)
    summary.folders += 1
    # depth=1 per folder: works with every envd version and never follows a cycle
    for entry in sorted(await session.list_dir(source), key=lambda e: e.name):
        if getattr(entry, "symlink_target", None):
            continue  # a link may point outside the folder, or back into it
        child = posixpath.join(source, entry.name)
        if _is_dir(entry):
            await _download_folder(session, child, target / entry.name, summary)
        else:
            await _download_file(session, child, target / entry.name, summary)


async def _download_file(
    session: SandboxSession, source: str, target: Path, summary: CopySummary
) -> None:
    data = await session.read_file(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    summary.files += 1
    summary.bytes += len(data)


async def list_dir(session: SandboxSession, path: str | None) -> list[str]:
    """Lines describing a sandbox folder: type marker, size, name (folders end with /)."""
    folder = remote_path(path, ".")
    entries = await session.list_dir(folder)
    lines = []
    for entry in sorted(entries, key=lambda e: (not _is_dir(e), e.name)):
        if _is_dir(entry):  # a folder's own size depends on the filesystem: say nothing
            lines.append(f"{'-':>12}  {entry.name}/")
        else:
            lines.append(f"{getattr(entry, 'size', 0):>12}  {entry.name}")
    return lines


def _is_dir(entry: Any) -> bool:
    """Whether an ``EntryInfo`` is a folder (None: nothing is there)."""
    kind = getattr(entry, "type", None)
    return getattr(kind, "value", kind) == "dir"
