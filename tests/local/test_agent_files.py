"""The agent's file ops, driven over a real agent connection (server.handle on a socketpair).

The agent is configured as with isolation "none": /home/user and /tmp map to temp dirs. The
last tests go through the unmodified SDK to an isolated sandbox of the local service.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import struct
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2b import Sandbox
from e2b.exceptions import FileNotFoundException, SandboxException

from e2b_kernel.local.agent import files, server


class Client:
    """One agent connection, as AgentClient speaks it but blocking."""

    def __init__(self, op: str, **params: object) -> None:
        self.sock, agent_side = socket.socketpair()
        self.thread = threading.Thread(target=server.handle, args=(agent_side,), daemon=True)
        self.thread.start()
        self.sock.sendall(json.dumps({"op": op, **params}).encode() + b"\n")
        self.buffer = b""
        self.reply = self.read_json()

    def read_json(self) -> dict | None:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def read_bytes(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


def call(op: str, **params: object) -> dict:
    client = Client(op, **params)
    try:
        assert client.reply is not None
        return client.reply
    finally:
        client.close()


def write(path: str, chunks: list[bytes], **params: object) -> tuple[dict, dict | None]:
    client = Client("fs.write", path=path, **params)
    try:
        if not client.reply["ok"]:
            return client.reply, None
        for chunk in [*chunks, b""]:
            client.sock.sendall(struct.pack(">Q", len(chunk)) + chunk)
        return client.reply, client.read_json()
    finally:
        client.close()


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    files.configure(roots={"/home/user": str(home), "/tmp": str(tmp)}, switch_ids=False)
    yield home, tmp
    files.configure(roots={}, switch_ids=False)


def test_paths_resolve_against_the_users_home() -> None:
    assert files.sandbox_path("a/b") == "/home/user/a/b"
    assert files.sandbox_path("x", "root") == "/root/x"
    assert files.sandbox_path("/home/user/../../etc/shadow") == "/etc/shadow"
    assert files.sandbox_path("//tmp/./x") == "/tmp/x"
    for bad in ("", None, "a\0b"):
        with pytest.raises(server.AgentError):
            files.sandbox_path(bad)


def test_unknown_user_is_refused(sandbox: tuple[Path, Path]) -> None:
    reply = call("fs.stat", path="/tmp", user="mallory")
    assert not reply["ok"] and reply["errno"] == errno.EINVAL and "mallory" in reply["error"]


def test_write_then_read_streams_byte_exact(sandbox: tuple[Path, Path]) -> None:
    home, _tmp = sandbox
    payload = os.urandom(700_000)
    first, last = write("deep/er/f.bin", [payload[:300_000], payload[300_000:]])
    assert first == {"ok": True, "path": "/home/user/deep/er/f.bin"}
    assert last is not None and last["ok"] and last["entry"]["size"] == len(payload)
    assert (home / "deep" / "er" / "f.bin").read_bytes() == payload
    client = Client("fs.read", path="/home/user/deep/er/f.bin")
    try:
        reply = client.reply
        mtime_ns = (home / "deep" / "er" / "f.bin").stat().st_mtime_ns
        size = len(payload)
        assert reply == {"ok": True, "size": size, "total": size, "mtime_ns": mtime_ns}
        assert client.read_bytes(len(payload)) == payload
        assert client.read_bytes(1) == b""
    finally:
        client.close()
    # A byte range: from an offset, at most a length (downloads with a Range header).
    client = Client("fs.read", path="/home/user/deep/er/f.bin", offset=10, length=5)
    try:
        assert (client.reply["size"], client.reply["total"]) == (5, len(payload))
        assert client.read_bytes(5) == payload[10:15]
        assert client.read_bytes(1) == b""
    finally:
        client.close()


def test_read_errors(sandbox: tuple[Path, Path]) -> None:
    home, _tmp = sandbox
    os.mkfifo(home / "pipe")
    assert call("fs.read", path="missing")["errno"] == errno.ENOENT
    assert call("fs.read", path="/home/user")["errno"] == errno.EISDIR
    assert call("fs.read", path="pipe")["errno"] == errno.ENXIO  # and it did not block
    assert call("fs.read", path="/dev/zero")["errno"] == errno.ENXIO
    reply = write("pipe", [b"x"])[0]
    assert reply["errno"] == errno.ENXIO and "not a regular file" in reply["error"]
    assert write("/home/user", [b"x"])[0]["errno"] == errno.EISDIR


def test_errors_name_the_sandbox_path_not_the_host_one(sandbox: tuple[Path, Path]) -> None:
    home, _tmp = sandbox
    (home / "file").write_text("x")
    reply = write("file/below", [b"x"])[0]
    assert reply["errno"] == errno.ENOTDIR
    assert str(home) not in reply["error"] and "/home/user/file/below" in reply["error"]


def test_stat_describes_files_dirs_and_links(sandbox: tuple[Path, Path]) -> None:
    home, tmp = sandbox
    (home / "f.txt").write_text("12345")
    (home / "f.txt").chmod(0o640)
    (home / "d").mkdir()
    (tmp / "target").write_text("abc")
    # Without isolation links resolve on the host; the target is shown in sandbox terms.
    (home / "link").symlink_to(tmp / "target")
    (home / "dangling").symlink_to("nowhere")
    entry = call("fs.stat", path="f.txt")["entry"]
    assert entry["name"] == "f.txt" and entry["type"] == "file" and entry["size"] == 5
    assert entry["mode"] == 0o640 and entry["permissions"] == "-rw-r-----"
    assert entry["path"] == "/home/user/f.txt" and not entry["is_symlink"]
    assert entry["mtime_ns"] == os.lstat(home / "f.txt").st_mtime_ns
    assert call("fs.stat", path="d")["entry"]["type"] == "dir"
    link = call("fs.stat", path="link")["entry"]
    assert link["is_symlink"] and link["type"] == "file" and link["size"] == 3
    assert link["symlink_target"] == "/tmp/target"
    assert call("fs.stat", path="dangling")["entry"]["type"] == "file"
    assert call("fs.stat", path="nope")["errno"] == errno.ENOENT
    assert call("fs.exists", path="dangling")["exists"] is True
    assert call("fs.exists", path="nope")["exists"] is False


def test_list_with_depth_streams_sorted_entries(sandbox: tuple[Path, Path]) -> None:
    home, _tmp = sandbox
    (home / "a" / "b" / "c").mkdir(parents=True)
    (home / "a" / "file").write_text("x")
    (home / "z").symlink_to("a")  # listed, never entered
    for i in range(600):  # more than one batch line
        (home / "a" / "b" / f"n{i:03}").write_text("")

    def listing(path: str, depth: int) -> list[str]:
        client = Client("fs.list", path=path, depth=depth)
        try:
            assert client.reply == {"ok": True}
            found: list[str] = []
            while (line := client.read_json()) is not None and "entries" in line:
                found += [e["path"] for e in line["entries"]]
            assert line == {"end": True}
            return found
        finally:
            client.close()

    assert listing("/home/user", 0) == ["/home/user/a", "/home/user/z"]
    deep = listing("/home/user", 3)
    assert deep[:3] == ["/home/user/a", "/home/user/a/b", "/home/user/a/b/c"]
    assert len(deep) == 2 + 2 + 600 + 1 and deep[-1] == "/home/user/z"
    assert call("fs.list", path="a/file")["errno"] == errno.ENOTDIR
    assert call("fs.list", path="nope")["errno"] == errno.ENOENT


def test_mkdir_rename_remove(sandbox: tuple[Path, Path]) -> None:
    home, _tmp = sandbox
    made = call("fs.mkdir", path="x/y")
    assert made["ok"] and made["entry"]["type"] == "dir" and (home / "x" / "y").is_dir()
    assert call("fs.mkdir", path="x/y")["errno"] == errno.EEXIST
    (home / "x" / "y" / "f").write_text("1")
    moved = call("fs.rename", source="x/y/f", destination="/tmp/new/g")
    assert moved["entry"]["path"] == "/tmp/new/g"
    assert call("fs.rename", source="x/gone", destination="q")["errno"] == errno.ENOENT
    (home / "x" / "link").symlink_to(home / "x" / "y")
    assert call("fs.remove", path="x/link") == {"ok": True}
    assert (home / "x" / "y").is_dir()  # the link went, not its target
    assert call("fs.remove", path="x") == {"ok": True}
    assert not (home / "x").exists()
    assert call("fs.remove", path="x") == {"ok": True}  # a missing path is no error


def test_metadata_is_stored_as_xattrs(sandbox: tuple[Path, Path]) -> None:
    home, _tmp = sandbox
    try:
        os.setxattr(home, "user.probe", b"1")
    except OSError:
        pytest.skip("no user xattrs on this filesystem")
    _first, last = write("m.txt", [b"x"], metadata={"owner": "me"})
    assert last is not None and last["ok"]
    assert os.getxattr(home / "m.txt", "user.e2b.owner") == b"me"


def test_watch_reports_envd_kinds_recursively(sandbox: tuple[Path, Path]) -> None:
    home, _tmp = sandbox
    (home / "w").mkdir()
    client = Client("fs.watch", path="w", recursive=True, entries=True)
    try:
        assert client.reply == {"ok": True}
        seen: list[tuple[str, str]] = []
        client.sock.settimeout(10)

        def read_until(wanted: tuple[str, str]) -> None:
            while wanted not in seen:
                event = client.read_json()
                assert event is not None, f"the watch ended before {wanted}; saw {seen}"
                seen.append((event["name"], event["type"]))
                if event["type"] == "create" and event["name"] == "sub":
                    assert event["entry"]["type"] == "dir"

        (home / "w" / "sub").mkdir()
        # The agent watches the new directory before it reports it: once its create is read,
        # what happens inside it is seen.
        read_until(("sub", "create"))
        (home / "w" / "sub" / "f").write_text("1")
        (home / "w" / "sub" / "f").chmod(0o600)
        os.rename(home / "w" / "sub" / "f", home / "w" / "g")
        (home / "w" / "g").unlink()
        read_until(("g", "remove"))
        for expected in [
            ("sub", "create"),
            ("sub/f", "create"),
            ("sub/f", "write"),
            ("sub/f", "chmod"),
            ("sub/f", "rename"),
            ("g", "create"),
        ]:
            assert expected in seen
    finally:
        client.close()  # the agent notices the hang-up and its thread ends
    assert not client.thread.is_alive()


def test_watch_of_a_missing_or_plain_file_is_refused(sandbox: tuple[Path, Path]) -> None:
    home, _tmp = sandbox
    (home / "f").write_text("")
    assert call("fs.watch", path="nope")["errno"] == errno.ENOENT
    assert call("fs.watch", path="f")["errno"] == errno.ENOTDIR


def test_disk_usage_counts_home_and_tmp(sandbox: tuple[Path, Path]) -> None:
    home, tmp = sandbox
    (home / "a").write_bytes(b"x" * 1000)
    (tmp / "b").write_bytes(b"y" * 500)
    os.link(tmp / "b", tmp / "c")  # counted once
    reply = call("fs.disk_usage")
    assert reply["used"] == 1500 and reply["total"] > 0


@pytest.mark.skipif(os.getuid() != 0, reason="switching ids needs root")
def test_requests_act_with_the_users_ids() -> None:
    base = Path(tempfile.mkdtemp())
    try:
        base.chmod(0o755)
        home, tmp = base / "home", base / "tmp"
        home.mkdir(mode=0o755)
        tmp.mkdir()
        os.chown(home, 1000, 1000)
        (base / "rootonly").mkdir(mode=0o700)
        files.configure(roots={"/home/user": str(home), "/tmp": str(tmp)}, switch_ids=True)
        _first, last = write("new/f.txt", [b"hi"])
        assert last is not None and last["ok"] and last["entry"]["owner"] != "root"
        assert (os.stat(home / "new").st_uid, os.stat(home / "new/f.txt").st_uid) == (1000, 1000)
        assert call("fs.mkdir", path="/tmp/x")["errno"] == errno.EACCES  # tmp is root's 0755
        assert call("fs.mkdir", path="/tmp/x", user="root")["ok"]
        assert os.stat(tmp / "x").st_uid == 0
        # The thread's ids are restored after each request.
        assert (os.getuid(), files._libc.setfsuid(-1)) == (0, 0)
    finally:
        files.configure(roots={}, switch_ids=False)
        shutil.rmtree(base)


def test_without_isolation_changes_stay_in_the_mapped_dirs(
    sandbox: tuple[Path, Path], tmp_path: Path
) -> None:
    home, _tmp = sandbox
    outside = tmp_path / "outside"
    outside.write_text("host")
    (home / "evil").symlink_to(outside)
    (home / "evil_dir").symlink_to(tmp_path)
    assert write("/etc/e2bk-should-not-exist", [b"x"])[0]["errno"] == errno.EROFS
    assert not os.path.exists("/etc/e2bk-should-not-exist")
    assert write("evil", [b"x"])[0]["errno"] == errno.EROFS
    assert write("evil_dir/new", [b"x"])[0]["errno"] == errno.EROFS
    assert call("fs.remove", path="evil_dir/outside")["errno"] == errno.EROFS
    assert call("fs.rename", source="evil_dir/outside", destination="x")["errno"] == errno.EROFS
    assert call("fs.remove", path="/home/user")["errno"] == errno.EROFS
    assert outside.read_text() == "host"
    assert call("fs.remove", path="evil") == {"ok": True}  # the link itself is in home
    assert outside.exists()


# --- through the unmodified SDK, against an isolated sandbox --------------------------------


def test_sdk_files_see_what_commands_see(sbx: Sandbox) -> None:
    sbx.commands.run("echo from-a-command > /tmp/a && mkdir -p /home/user/cmd/sub")
    assert sbx.files.read("/tmp/a") == "from-a-command\n"
    assert [e.name for e in sbx.files.list("/home/user/cmd")] == ["sub"]
    sbx.files.write("/tmp/b", "from-the-api")
    assert sbx.commands.run("cat /tmp/b").stdout == "from-the-api"
    # Files written for the default user belong to it, as if a command of that user wrote them.
    assert sbx.commands.run("stat -c %U:%G /tmp/b").stdout.strip() == "user:user"
    assert sbx.files.get_info("/tmp/b").owner == "user"
    sbx.files.write("/tmp/c", "as root", user="root")
    assert sbx.commands.run("stat -c %U /tmp/c").stdout.strip() == "root"


def test_sdk_host_files_are_out_of_reach(sbx: Sandbox) -> None:
    # The host's /root (with its .gitconfig, keys, ...) is not the sandbox's /root.
    host_root = set(os.listdir("/root"))
    with pytest.raises(FileNotFoundException):
        sbx.files.read("/root/.gitconfig")
    inside = {e.name for e in sbx.files.list("/root", user="root")}
    assert inside == set(sbx.commands.run("ls -A /root", user="root").stdout.split())
    assert inside != host_root
    # A link planted in /home/user leads to the sandbox's masked shadow, never the host's.
    sbx.commands.run("ln -sf /etc/shadow /home/user/shadow-link")
    try:
        leaked = sbx.files.read("/home/user/shadow-link", format="bytes", user="root")
    except SandboxException:
        leaked = b""  # refused is fine too
    assert b"root:" not in bytes(leaked)
    # A link to the project folder finds nothing: the sandbox does not see it.
    project = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sbx.commands.run(f"ln -sf {project}/pyproject.toml /home/user/project-link")
    with pytest.raises(FileNotFoundException):
        sbx.files.read("/home/user/project-link")


def test_sdk_relative_paths_use_the_users_home(sbx: Sandbox) -> None:
    assert sbx.files.write("rel.txt", "u").path == "/home/user/rel.txt"
    assert sbx.files.write("rel.txt", "r", user="root").path == "/root/rel.txt"
    assert sbx.commands.run("cat /root/rel.txt", user="root").stdout == "r"
    # As user, the API is allowed exactly what a command of user is allowed.
    sbx.commands.run("chmod 600 /root/rel.txt", user="root")
    with pytest.raises(SandboxException, match=r"read-only file system|permission denied"):
        sbx.files.read("/root/rel.txt")
    assert sbx.files.read("/root/rel.txt", user="root") == "r"


def test_sdk_deep_listing_is_walked_in_the_sandbox(sbx: Sandbox) -> None:
    entries = sbx.files.list("/usr", depth=4)  # many lines from the agent, one reply
    assert len(entries) > 1000 and all(e.path.startswith("/usr/") for e in entries)
    assert not any(e.path.startswith("/usr/../") for e in entries)
