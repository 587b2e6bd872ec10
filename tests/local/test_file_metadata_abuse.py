"""File metadata and watches that sandbox code shapes to cost the shared service.

Metadata (``user.e2b.*`` extended attributes) is set by sandbox code with plain ``setxattr``,
and tmpfs takes megabytes of it per file. Each entry the service returns carries it, so it is
bounded per entry (16 KiB), per listing (16 MiB) and per polled watcher's backlog (16 MiB or
10,000 events, past which the next collection says how many were dropped). Recursive watches
walk trees deeper than Python recurses. Before these bounds, 3,000 events of 1 MiB each took
a service to 14 GB and stalled another sandbox for 50 s, and one file with over 1 MiB of
metadata silently ended its owner's watch and broke the listing of its folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from e2b import FilesystemEventType, Sandbox
from e2b.exceptions import SandboxException

from e2b_kernel.local.envd.filesystem import _PolledWatcher

_POISON = (
    "import os\n"
    "os.makedirs('/home/user/{folder}', exist_ok=True)\n"
    "for n in range({files}):\n"
    "    p = '/home/user/{folder}/f%05d' % n\n"
    "    open(p, 'w').close()\n"
    "    for k in range({attrs}):\n"
    "        os.setxattr(p, 'user.e2b.k%03d' % k, b'a' * {size})\n"
)


def _plant(sbx: Sandbox, folder: str, files: int, attrs: int, size: int) -> None:
    script = _POISON.format(folder=folder, files=files, attrs=attrs, size=size)
    sbx.files.write(f"/tmp/plant_{folder}.py", script)
    sbx.commands.run(f"python3 /tmp/plant_{folder}.py", timeout=120)


def test_a_file_with_megabytes_of_metadata_neither_blinds_a_watch_nor_breaks_listings(
    sbx: Sandbox,
) -> None:
    sbx.files.make_dir("watched")
    handle = sbx.files.watch_dir("watched", include_entry=True)
    try:
        _plant(sbx, "watched", files=1, attrs=300, size=4000)  # 1.2 MB on one file
        sbx.files.write("watched/after.txt", "written after the poison")
        seen: dict[str, Any] = {}
        deadline = time.monotonic() + 30
        while "after.txt" not in seen and time.monotonic() < deadline:
            seen.update((event.name, event) for event in handle.get_new_events())
        assert "after.txt" in seen, f"the watch went blind: {sorted(seen)}"
    finally:
        handle.stop()
    (listed,) = [e for e in sbx.files.list("watched") if e.name == "f00000"]
    assert 0 < _metadata_bytes(listed.metadata) <= 16 * 1024
    info = sbx.files.get_info("watched/f00000")
    assert info.metadata == listed.metadata  # the keys that fit, in order: k000...
    assert sorted(info.metadata or {}) == [f"k{k:03d}" for k in range(len(info.metadata or {}))]


def test_a_listing_of_files_carrying_too_much_metadata_is_refused_with_the_fix(
    sbx: Sandbox,
) -> None:
    _plant(sbx, "heavy", files=1100, attrs=4, size=4000)  # 17 MiB of metadata in all
    with pytest.raises(SandboxException, match=r"more than 16 MiB of metadata: list a smaller"):
        sbx.files.list("heavy")
    _plant(sbx, "light", files=3, attrs=4, size=4000)
    assert len(sbx.files.list("light")) == 3


def test_a_recursive_watch_covers_a_tree_deeper_than_python_recurses(sbx: Sandbox) -> None:
    sbx.commands.run(
        "python3 -c \"import os\nos.makedirs('/home/user/deep', exist_ok=True)\n"
        "os.chdir('/home/user/deep')\nfor i in range(1500):\n    os.mkdir('d'); os.chdir('d')\""
    )
    handle = sbx.files.watch_dir("deep", recursive=True)
    try:
        sbx.files.write("deep/top.txt", "x")
        seen: set[tuple[str, FilesystemEventType]] = set()
        deadline = time.monotonic() + 30
        while ("top.txt", FilesystemEventType.WRITE) not in seen and time.monotonic() < deadline:
            seen.update((event.name, event.type) for event in handle.get_new_events())
        assert ("top.txt", FilesystemEventType.WRITE) in seen
    finally:
        handle.stop()


def _metadata_bytes(metadata: dict[str, str] | None) -> int:
    return sum(len(k) + len(v) for k, v in (metadata or {}).items())


# --- the polled watcher's backlog, fed lines as the agent sends them ----------------------


class _AgentLines:
    """The agent's side of a watch: the given lines, then EOF or a broken stream."""

    def __init__(self, lines: list[dict[str, Any]], then: Exception | None = None) -> None:
        self._lines = iter(lines)
        self._then = then
        self.consumed = asyncio.Event()

    async def read_json(self) -> dict[str, Any] | None:
        line = next(self._lines, None)
        if line is None:
            self.consumed.set()
            if self._then is not None:
                raise self._then
            await asyncio.Event().wait()  # an open watch with nothing more to say
        return line

    async def close(self) -> None:
        pass


def _event_line(n: int, metadata_bytes: int) -> dict[str, Any]:
    name = f"f{n:05d}"
    entry = {
        "name": name, "type": "file", "path": f"/home/user/w/{name}", "size": 0, "mode": 0o644,
        "permissions": "-rw-r--r--", "owner": "user", "group": "user", "mtime_ns": 0,
        "symlink_target": None, "is_symlink": False,
        "metadata": {"k": "a" * metadata_bytes},
    }  # fmt: skip
    return {"name": name, "type": "write", "entry": entry}


@contextlib.asynccontextmanager
async def _watcher_after(lines: _AgentLines) -> AsyncIterator[_PolledWatcher]:
    """A polled watcher once it has read every line."""
    watcher = _PolledWatcher(lines)  # type: ignore[arg-type]
    await lines.consumed.wait()
    yield watcher
    await watcher.stop()


def test_a_polled_watcher_keeps_a_bounded_backlog_then_says_how_many_it_dropped() -> None:
    async def scenario() -> None:
        lines = _AgentLines([_event_line(n, 16_000) for n in range(3000)])  # 48 MB of events
        async with _watcher_after(lines) as watcher:
            kept = watcher.collect()
            assert 900 < len(kept) < 1100  # 16 MiB of them
            assert [e.name for e in kept] == [f"f{n:05d}" for n in range(len(kept))]
            with pytest.raises(ConnectError) as dropped:
                watcher.collect()
            assert dropped.value.code == Code.RESOURCE_EXHAUSTED
            assert f"{3000 - len(kept)} filesystem events were dropped" in str(dropped.value)
            assert watcher.collect() == []  # said once; the watch goes on

    asyncio.run(scenario())


def test_a_polled_watcher_whose_stream_broke_delivers_its_events_then_says_so() -> None:
    async def scenario() -> None:
        broken = ValueError("Separator is not found, and chunk exceed the limit")
        lines = _AgentLines([_event_line(n, 10) for n in range(3)], then=broken)
        async with _watcher_after(lines) as watcher:
            assert [e.name for e in watcher.collect()] == ["f00000", "f00001", "f00002"]
            for _ in range(2):
                with pytest.raises(ConnectError, match="the watch stopped: Separator") as stop:
                    watcher.collect()
                assert stop.value.code == Code.UNAVAILABLE

    asyncio.run(scenario())
