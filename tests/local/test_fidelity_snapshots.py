"""Snapshots, fork and filesystem-only pause through the unmodified SDK (filesystem subset)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path

import pytest
from e2b import AsyncSandbox as AsyncBaseSandbox
from e2b import Sandbox as BaseSandbox
from e2b.exceptions import SandboxException
from e2b_code_interpreter import Sandbox
from local_helpers import host_pids_with, marker, wait_for

pytestmark = pytest.mark.usefixtures("sdk_env")


def _names(paginator: object) -> set[str]:
    items = []
    while True:
        items += paginator.next_items()  # type: ignore[attr-defined]
        if not paginator.has_next:  # type: ignore[attr-defined]
            return {s.snapshot_id for s in items}


def test_snapshot_create_list_delete_and_sandboxes_from_it() -> None:
    source = BaseSandbox.create(timeout=120)
    name = f"snap-{uuid.uuid4().hex[:8]}"
    tag = marker()
    try:
        source.files.write("/home/user/data/kept.txt", "from the snapshot")
        source.commands.run("ln -s data/kept.txt /home/user/link; chmod 640 data/kept.txt")
        source.commands.run(f"exec -a {tag} sleep 600", background=True, timeout=0)
        wait_for(lambda: bool(host_pids_with(tag)), what="the marked process")
        with pytest.raises(SandboxException, match=r"400: .*only the filesystem"):
            source.create_snapshot(mode="full")
        unnamed = source.create_snapshot()
        named = BaseSandbox.create_snapshot(source.sandbox_id, name=name)
        assert named.snapshot_id == f"{name}:latest" and named.names == [f"local/{name}:latest"]
        assert source.is_running()  # the source keeps running

        assert {unnamed.snapshot_id, named.snapshot_id} <= _names(BaseSandbox.list_snapshots())
        assert _names(source.list_snapshots()) == {unnamed.snapshot_id, named.snapshot_id}
        assert _names(BaseSandbox.list_snapshots(name=name)) == {named.snapshot_id}
        paged = BaseSandbox.list_snapshots(sandbox_id=source.sandbox_id, limit=1)
        assert len(paged.next_items()) == 1 and paged.has_next
        assert _names(BaseSandbox.list_snapshots(sandbox_id="nosuchsandbox0000000")) == set()

        copies = [BaseSandbox.create(snap, timeout=60) for snap in (named.snapshot_id, name)]
        try:
            for copy in copies:
                assert copy.files.read("/home/user/data/kept.txt") == "from the snapshot"
                out = copy.commands.run("stat -c '%U %a' data/kept.txt; readlink link").stdout
                assert out.split() == ["user", "640", "data/kept.txt"]
                # Fresh processes: the source's sleeper is not in the copy.
                assert tag not in copy.commands.run("ps -eo args").stdout
            copies[0].files.write("/home/user/data/kept.txt", "changed")
            assert copies[1].files.read("/home/user/data/kept.txt") == "from the snapshot"
            assert source.files.read("/home/user/data/kept.txt") == "from the snapshot"
        finally:
            for copy in copies:
                copy.kill()

        assert BaseSandbox.delete_snapshot(named.snapshot_id) is True
        assert BaseSandbox.delete_snapshot(named.snapshot_id) is False
        assert _names(BaseSandbox.list_snapshots(name=name)) == set()
        assert BaseSandbox.delete_snapshot(unnamed.snapshot_id) is True
    finally:
        source.kill()
    assert not host_pids_with(tag) or wait_for(lambda: not host_pids_with(tag)) is None


def test_fork_makes_independent_copies_with_the_files() -> None:
    source = Sandbox.create(timeout=120, metadata={"role": "source"}, envs={"FOO": "bar"})
    try:
        source.files.write("shared.txt", "before the fork")
        source.files.write("meta.txt", "m", metadata={"owner": "team-a"})
        source.commands.run("ln shared.txt hard.txt && ln hard.txt again.txt")  # as pip, git...
        source.run_code("x = 41")
        forks = source.fork(count=2)
        assert len(forks) == 2 and all(isinstance(f, Sandbox) for f in forks)
        first, second = forks  # type: ignore[misc]
        try:
            ids = {source.sandbox_id, first.sandbox_id, second.sandbox_id}
            assert len(ids) == 3
            for fork in (first, second):
                assert fork.files.read("shared.txt") == "before the fork"
                assert fork.files.get_info("meta.txt").metadata == {"owner": "team-a"}
                links = fork.commands.run("stat -c %h:%i shared.txt hard.txt again.txt")
                assert len(set(links.stdout.split())) == 1  # one inode, three names
                assert links.stdout.startswith("3:")
                assert fork.get_info().metadata == {"role": "source"}
                assert fork.run_code("import os; os.getenv('FOO')").text == "bar"
                # Memory is not kept: a fork's Python starts fresh.
                assert fork.run_code("x").error.name == "NameError"  # type: ignore[union-attr]
            first.files.write("shared.txt", "first")
            assert second.files.read("shared.txt") == "before the fork"
            assert source.files.read("shared.txt") == "before the fork"
            assert source.run_code("x + 1").text == "42"  # the source keeps its state
        finally:
            first.kill()
            second.kill()
        one = BaseSandbox.fork(source.sandbox_id, timeout=30)
        assert len(one) == 1 and isinstance(one[0], BaseSandbox)
        one[0].kill()
        with pytest.raises(SandboxException):
            BaseSandbox.fork("nosuchsandbox0000000")
    finally:
        source.kill()


def _start_child_and_daemon(sbx: BaseSandbox) -> list[str]:
    """A command's child and a daemon (an orphan, adopted by the namespace's init), tagged."""
    child, daemon = marker(), marker()
    sbx.commands.run(f"exec -a {child} sleep 600", background=True, timeout=0)
    sbx.commands.run(f"setsid bash -c 'exec -a {daemon} sleep 600' >/dev/null 2>&1 &")
    # Until each has exec'd its sleep, the tag is also on the shells that start it, and a
    # process inside an exec briefly shows no command line at all.
    wait_for(lambda: _running_as(child) and _running_as(daemon), what="both sleepers")
    return [child, daemon]


def _running_as(tag: str) -> bool:
    """Whether a host process runs with ``tag`` as its argv[0] (``exec -a tag``)."""
    for pid in host_pids_with(tag):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == tag.encode():
                return True
    return False


def test_filesystem_pause_keeps_files_and_drops_processes() -> None:
    sbx = Sandbox.create(timeout=120)
    try:
        sbx.files.write("kept.txt", "yes")
        sbx.run_code("y = 1")
        tags = _start_child_and_daemon(sbx)
        assert sbx.pause(keep_memory=False) is True
        assert sbx.get_info().state.value == "paused"
        resumed = Sandbox.connect(sbx.sandbox_id)
        assert resumed.files.read("kept.txt") == "yes"
        for tag in tags:
            wait_for(lambda: not host_pids_with(tag), what=f"{tag} to be gone")  # noqa: B023
        assert resumed.run_code("y").error.name == "NameError"  # type: ignore[union-attr]
        assert resumed.run_code("1 + 1").text == "2"
    finally:
        sbx.kill()


def test_reboot_on_resume_drops_processes() -> None:
    sbx = BaseSandbox.create(timeout=120)
    try:
        tags = _start_child_and_daemon(sbx)
        assert sbx.pause()  # a full pause keeps the processes...
        assert {tag: _running_as(tag) for tag in tags} == dict.fromkeys(tags, True)
        again = BaseSandbox.connect(sbx.sandbox_id, on_resume="reboot")
        assert again.is_running()  # ...but a reboot on resume starts from the disk alone
        for tag in tags:
            wait_for(lambda: not host_pids_with(tag), what=f"{tag} to be gone")  # noqa: B023
    finally:
        sbx.kill()


def test_async_snapshot_and_fork() -> None:
    async def scenario() -> None:
        source = await AsyncBaseSandbox.create(timeout=120)
        try:
            await source.files.write("a.txt", "async")
            snap = await source.create_snapshot(mode="filesystem")
            listed = AsyncBaseSandbox.list_snapshots(sandbox_id=source.sandbox_id)
            assert [s.snapshot_id for s in await listed.next_items()] == [snap.snapshot_id]
            copy = await AsyncBaseSandbox.create(snap.snapshot_id, timeout=60)
            forks = await source.fork()
            try:
                assert await copy.files.read("a.txt") == "async"
                assert await forks[0].files.read("a.txt") == "async"  # type: ignore[union-attr]
            finally:
                await copy.kill()
                await forks[0].kill()  # type: ignore[union-attr]
            assert await AsyncBaseSandbox.delete_snapshot(snap.snapshot_id) is True
        finally:
            await source.kill()

    asyncio.run(scenario())
