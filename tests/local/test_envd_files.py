"""envd through the unmodified SDK: /health, /files up and down, the Filesystem RPC."""

from __future__ import annotations

import asyncio
import io
import os

import pytest
from e2b import AsyncSandbox, FileType, Sandbox
from e2b.exceptions import FileNotFoundException, InvalidArgumentException, SandboxException
from e2b.sandbox.filesystem.filesystem import WriteEntry
from local_helpers import sdk_options, wait_for

from e2b_kernel.local import RunningService


def test_health_is_running(sbx: Sandbox) -> None:
    assert sbx.is_running()


def test_text_round_trip_and_relative_paths(sbx: Sandbox) -> None:
    info = sbx.files.write("notes/hello.txt", "héllo\nwörld")
    assert info.path == "/home/user/notes/hello.txt"
    assert info.name == "hello.txt"
    assert sbx.files.read("/home/user/notes/hello.txt") == "héllo\nwörld"


def test_binary_multipart_and_octet_stream_are_byte_exact(sbx: Sandbox) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 7)
    sbx.files.write("/home/user/multipart.bin", payload)
    assert sbx.files.read("/home/user/multipart.bin", format="bytes") == payload
    sbx.files.write("/tmp/octet.bin", io.BytesIO(payload))  # file-like: octet-stream
    assert bytes(sbx.files.read("/tmp/octet.bin", format="bytes")) == payload
    sbx.files.write("/tmp/gz.bin", payload, gzip=True)  # octet-stream with gzip
    assert bytes(sbx.files.read("/tmp/gz.bin", format="bytes", gzip=True)) == payload
    streamed = b"".join(sbx.files.read("/tmp/gz.bin", format="stream"))
    assert streamed == payload


def test_write_files_many_at_once(sbx: Sandbox) -> None:
    entries = [WriteEntry(path=f"/home/user/many/f{i}.txt", data=f"n{i}") for i in range(5)]
    written = sbx.files.write_files(entries)
    assert sorted(w.path for w in written) == sorted(e["path"] for e in entries)
    assert sbx.files.read("/home/user/many/f3.txt") == "n3"


def test_read_errors(sbx: Sandbox) -> None:
    with pytest.raises(FileNotFoundException, match="does not exist"):
        sbx.files.read("/home/user/no/such/file")
    with pytest.raises(InvalidArgumentException, match="is a directory"):
        sbx.files.read("/home/user")


def test_writes_outside_home_and_tmp_are_refused(sbx: Sandbox) -> None:
    with pytest.raises(SandboxException, match=r"read-only file system|permission denied"):
        sbx.files.write("/etc/e2bk-should-not-exist", "x")
    assert not os.path.exists("/etc/e2bk-should-not-exist")


def test_symlink_to_host_file_cannot_be_written_through(sbx: Sandbox) -> None:
    sbx.commands.run("ln -sf /etc/hostname /home/user/evil-link")
    before = open("/etc/hostname", "rb").read()
    with pytest.raises(SandboxException, match=r"read-only file system|permission denied"):
        sbx.files.write("/home/user/evil-link", "owned")
    assert open("/etc/hostname", "rb").read() == before
    # Reading through it shows what a process inside sees (the sandbox's own /etc/hostname).
    inside = sbx.commands.run("cat /home/user/evil-link").stdout
    assert sbx.files.read("/home/user/evil-link") == inside


def test_filesystem_rpc(sbx: Sandbox) -> None:
    assert sbx.files.make_dir("/home/user/rpc/a/b") is True
    assert sbx.files.make_dir("/home/user/rpc/a/b") is False
    sbx.files.write("/home/user/rpc/a/file.txt", "12345")
    info = sbx.files.get_info("/home/user/rpc/a/file.txt")
    assert info.type == FileType.FILE and info.size == 5 and info.name == "file.txt"
    assert sbx.files.exists("/home/user/rpc/a/file.txt")
    assert not sbx.files.exists("/home/user/rpc/nope")
    top = sbx.files.list("/home/user/rpc")
    assert [(e.name, e.type) for e in top] == [("a", FileType.DIR)]
    deep = sbx.files.list("/home/user/rpc", depth=3)
    assert {e.path for e in deep} == {
        "/home/user/rpc/a",
        "/home/user/rpc/a/b",
        "/home/user/rpc/a/file.txt",
    }
    moved = sbx.files.rename("/home/user/rpc/a/file.txt", "/home/user/rpc/moved.txt")
    assert moved.path == "/home/user/rpc/moved.txt"
    assert sbx.files.read("/home/user/rpc/moved.txt") == "12345"
    with pytest.raises(FileNotFoundException):
        sbx.files.rename("/home/user/rpc/gone", "/home/user/rpc/x")
    with pytest.raises(FileNotFoundException):
        sbx.files.get_info("/home/user/rpc/gone")
    with pytest.raises(FileNotFoundException):
        sbx.files.list("/home/user/rpc/gone")
    sbx.files.remove("/home/user/rpc")
    assert not sbx.files.exists("/home/user/rpc")
    sbx.files.remove("/home/user/rpc")  # removing a missing path is not an error


def test_read_only_host_is_listable(sbx: Sandbox) -> None:
    names = {e.name for e in sbx.files.list("/etc")}
    assert "passwd" in names
    with pytest.raises(SandboxException, match="permission"):
        sbx.files.remove("/etc/passwd")
    assert os.path.exists("/etc/passwd")


def test_files_async(local_service: RunningService) -> None:
    async def run() -> None:
        sandbox = await AsyncSandbox.create(timeout=120, **sdk_options(local_service))
        try:
            await sandbox.files.write("/home/user/a.bin", b"\x00\xff" * 1000)
            assert (
                await sandbox.files.read("/home/user/a.bin", format="bytes") == b"\x00\xff" * 1000
            )
            assert await sandbox.files.exists("/home/user/a.bin")
            assert [e.name for e in await sandbox.files.list("/home/user") if e.name == "a.bin"]
            await sandbox.files.remove("/home/user/a.bin")
            assert not await sandbox.files.exists("/home/user/a.bin")
        finally:
            await sandbox.kill()

    asyncio.run(run())


def test_watch_dir_reports_changes(sbx: Sandbox) -> None:
    sbx.files.make_dir("/home/user/watched")
    handle = sbx.files.watch_dir("/home/user/watched")
    try:
        sbx.files.write("/home/user/watched/new.txt", "1")
        events: list = []
        wait_for(
            lambda: bool(events.extend(handle.get_new_events()) or events),
            what="a filesystem event",
        )
        assert any(e.name == "new.txt" and e.type.name == "CREATE" for e in events)
    finally:
        handle.stop()


def test_watch_dir_async_stream(local_service: RunningService) -> None:
    async def run() -> None:
        sandbox = await AsyncSandbox.create(timeout=120, **sdk_options(local_service))
        try:
            seen: asyncio.Queue = asyncio.Queue()
            handle = await sandbox.files.watch_dir("/home/user", on_event=seen.put_nowait)
            await sandbox.files.write("/home/user/streamed.txt", "1")

            async def streamed_event() -> object:
                while True:
                    event = await seen.get()
                    if event.name == "streamed.txt":
                        return event

            event = await asyncio.wait_for(streamed_event(), 30)
            assert event.type.name == "CREATE"
            await handle.stop()
        finally:
            await sandbox.kill()

    asyncio.run(run())


def test_fifos_and_devices_are_refused_without_blocking(sbx: Sandbox) -> None:
    sbx.commands.run("mkfifo /home/user/pipe")
    with pytest.raises(InvalidArgumentException, match="not a regular file"):
        sbx.files.read("/home/user/pipe")
    with pytest.raises(InvalidArgumentException, match="not a regular file"):
        sbx.files.write("/home/user/pipe", "x")
    with pytest.raises(InvalidArgumentException, match="not a regular file"):
        sbx.files.read("/dev/zero")
    assert sbx.files.read("/etc/hostname")  # regular read-only host files still work
