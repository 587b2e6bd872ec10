"""Files as E2B gives them, through the unmodified SDK (sync and async): EntryInfo details,
user metadata kept as extended attributes, and recursive watches that miss nothing."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from e2b import AsyncSandbox, FilesystemEventType, FileType, Sandbox

pytestmark = pytest.mark.usefixtures("sdk_env")

BURST = 300  # files written in one command while a watch is on


def _check_details(info: Any, *, size: int, mode: int, perms: str) -> None:
    assert (info.size, info.mode, info.permissions) == (size, mode, perms)
    assert (info.owner, info.group) == ("user", "user")
    age = datetime.now(timezone.utc) - info.modified_time
    assert timedelta(seconds=-5) <= age < timedelta(minutes=5)
    assert info.symlink_target is None


def test_entry_info_details_and_metadata_sync() -> None:
    sbx = Sandbox.create(timeout=120)
    try:
        written = sbx.files.write("doc.txt", "hello", metadata={"Owner": "team-a", "k2": "v 2"})
        assert written.metadata == {"owner": "team-a", "k2": "v 2"}  # keys lowercased
        sbx.commands.run("chmod 640 doc.txt && ln -s doc.txt link")

        info = sbx.files.get_info("doc.txt")
        _check_details(info, size=5, mode=0o640, perms="-rw-r-----")
        assert info.metadata == {"owner": "team-a", "k2": "v 2"}

        listed = {e.name: e for e in sbx.files.list("/home/user")}
        assert listed["doc.txt"].metadata == {"owner": "team-a", "k2": "v 2"}
        assert listed["link"].type == FileType.SYMLINK
        assert listed["link"].symlink_target == "/home/user/doc.txt"
        plain = sbx.files.write("plain.txt", "x")
        assert plain.metadata is None and sbx.files.get_info("plain.txt").metadata is None

        moved = sbx.files.rename("doc.txt", "sub/moved.txt")
        assert moved.metadata == {"owner": "team-a", "k2": "v 2"}
        assert sbx.files.get_info("sub/moved.txt").metadata == {"owner": "team-a", "k2": "v 2"}
    finally:
        sbx.kill()


def test_entry_info_details_and_metadata_async() -> None:
    asyncio.run(_async_metadata())


async def _async_metadata() -> None:
    sbx = await AsyncSandbox.create(timeout=120)
    try:
        await sbx.files.write("a.bin", b"12345678", metadata={"kind": "blob"})
        info = await sbx.files.get_info("a.bin")
        _check_details(info, size=8, mode=0o644, perms="-rw-r--r--")
        assert info.metadata == {"kind": "blob"}
        listed = await sbx.files.list("/home/user")
        assert [e.metadata for e in listed if e.name == "a.bin"] == [{"kind": "blob"}]
        moved = await sbx.files.rename("a.bin", "b.bin")
        assert moved.metadata == {"kind": "blob"}
    finally:
        await sbx.kill()


NESTED = 40  # nested folders made in the burst, each with a file written at once


def _burst_command(root: str) -> str:
    # Each file is written right after its folders appear, before any watch on them can
    # exist: only a rescan of a new folder reports it.
    return (
        f"for i in $(seq {NESTED}); do mkdir -p {root}/n$i/deep && echo x > {root}/n$i/deep/f;"
        f" done; for i in $(seq {BURST}); do echo $i > {root}/b$i; done; "
        f"echo later > {root}/n1/deep/later.txt; touch {root}/done"
    )


def _expected(events: list[tuple[str, FilesystemEventType]]) -> None:
    created = {name for name, kind in events if kind == FilesystemEventType.CREATE}
    nested = {f"n{i}/deep/f" for i in range(1, NESTED + 1)}
    assert nested <= created, sorted(nested - created)[:10]
    assert {f"b{i}" for i in range(1, BURST + 1)} <= created
    assert "n1/deep/later.txt" in created  # a folder added later is watched too


def test_recursive_watch_sees_nested_folders_and_bursts_sync() -> None:
    sbx = Sandbox.create(timeout=120)
    try:
        sbx.files.make_dir("w")
        handle = sbx.files.watch_dir("w", recursive=True)
        sbx.commands.run(_burst_command("/home/user/w"))
        events: list[tuple[str, FilesystemEventType]] = []
        deadline = time.monotonic() + 30
        while not any(n == "done" for n, _ in events) and time.monotonic() < deadline:
            events += [(e.name, e.type) for e in handle.get_new_events()]
        handle.stop()
        _expected(events)
    finally:
        sbx.kill()


def test_recursive_watch_sees_nested_folders_and_bursts_async() -> None:
    asyncio.run(_async_watch())


async def _async_watch() -> None:
    sbx = await AsyncSandbox.create(timeout=120)
    try:
        await sbx.files.make_dir("w")
        events: list[tuple[str, FilesystemEventType]] = []
        done = asyncio.Event()

        def on_event(event: Any) -> None:
            events.append((event.name, event.type))
            if event.name == "done":
                done.set()

        handle = await sbx.files.watch_dir("w", on_event, recursive=True)
        await sbx.commands.run(_burst_command("/home/user/w"))
        await asyncio.wait_for(done.wait(), 30)
        await handle.stop()
        _expected(events)
    finally:
        await sbx.kill()


def test_downloads_are_served_as_go_serves_content() -> None:
    """envd serves a download with Go's http.ServeContent: one Range (206, 416), the type by
    extension or sniffed, Last-Modified and If-Modified-Since (304). Every file came whole
    as application/octet-stream: a browser could not seek a video or show a page."""
    sbx = Sandbox.create(timeout=120)
    try:
        sbx.files.write("dl/alpha.txt", "abcdefghijklmnopqrstuvwxyz")
        sbx.files.write("dl/page.html", "<html><body>hi</body></html>")
        sbx.files.write("dl/notes", "plain words\n")
        sbx.files.write("dl/blob", b"\x00\x01\x02binary")
        sbx.files.write("dl/picture", b"\x89PNG\r\n\x1a\n" + b"\x00" * 16)
        with httpx.Client(timeout=30) as http:
            whole = http.get(sbx.download_url("dl/alpha.txt"))
            assert whole.status_code == 200 and whole.text == "abcdefghijklmnopqrstuvwxyz"
            assert whole.headers["content-type"] == "text/plain; charset=utf-8"
            assert whole.headers["accept-ranges"] == "bytes"
            url = sbx.download_url("dl/alpha.txt")
            part = http.get(url, headers={"Range": "bytes=6-9"})
            assert (part.status_code, part.text) == (206, "ghij")
            assert part.headers["content-range"] == "bytes 6-9/26"
            tail = http.get(url, headers={"Range": "bytes=-3"})
            assert (tail.status_code, tail.text) == (206, "xyz")
            missed = http.get(url, headers={"Range": "bytes=100-"})
            assert missed.status_code == 416 and missed.headers["content-range"] == "bytes */26"
            cached = http.get(url, headers={"If-Modified-Since": whole.headers["last-modified"]})
            assert cached.status_code == 304 and cached.content == b""
            kinds = {
                name: http.get(sbx.download_url(f"dl/{name}")).headers["content-type"]
                for name in ("page.html", "notes", "blob", "picture")
            }
        assert kinds == {
            "page.html": "text/html; charset=utf-8",
            "notes": "text/plain; charset=utf-8",
            "blob": "application/octet-stream",
            "picture": "image/png",
        }
        assert sbx.files.read("dl/blob", format="bytes") == b"\x00\x01\x02binary"
    finally:
        sbx.kill()
