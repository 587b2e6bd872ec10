"""The control plane through the unmodified SDK: create, info, list, timeouts, pause, kill."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from e2b import AsyncSandbox as AsyncBaseSandbox
from e2b import Sandbox as BaseSandbox
from e2b import SandboxQuery, SandboxState
from e2b.exceptions import (
    AuthenticationException,
    NotFoundException,
    SandboxException,
)
from e2b_code_interpreter import AsyncSandbox, Sandbox
from local_helpers import host_pids_with, marker, wait_for

from e2b_kernel.local import start_in_thread

pytestmark = pytest.mark.usefixtures("sdk_env")


def test_create_info_kill_sync() -> None:
    sbx = Sandbox.create(timeout=120, metadata={"purpose": "info"}, envs={"FOO": "bar"})
    try:
        assert re.fullmatch(r"[a-z0-9]{20}", sbx.sandbox_id)
        assert sbx.is_running()
        info = sbx.get_info()
        assert info.sandbox_id == sbx.sandbox_id
        assert info.template_id == "code-interpreter-v1"
        assert info.metadata == {"purpose": "info"}
        assert info.state == SandboxState.RUNNING
        assert info.envd_version == "0.6.5"
        lifetime = info.end_at - info.started_at
        assert timedelta(seconds=119) <= lifetime <= timedelta(seconds=121)
    finally:
        assert sbx.kill() is True
    assert sbx.is_running() is False
    assert BaseSandbox.kill(sbx.sandbox_id) is False
    with pytest.raises(NotFoundException):
        BaseSandbox.get_info(sbx.sandbox_id)
    with pytest.raises(NotFoundException):
        BaseSandbox.connect(sbx.sandbox_id)


def test_set_timeout_and_connect_move_end_at() -> None:
    sbx = BaseSandbox.create(timeout=60)
    try:
        first = sbx.get_info().end_at
        sbx.set_timeout(600)
        later = sbx.get_info().end_at
        assert later - first >= timedelta(seconds=500)
        again = BaseSandbox.connect(sbx.sandbox_id, timeout=30)  # connect only extends
        assert again.sandbox_id == sbx.sandbox_id
        assert again.get_info().end_at >= later - timedelta(seconds=1)
        again.set_timeout(30)  # set_timeout may shorten
        assert sbx.get_info().end_at < later
    finally:
        sbx.kill()


def test_list_filters_by_metadata_and_pages() -> None:
    tag = uuid.uuid4().hex
    created = [
        BaseSandbox.create(timeout=120, metadata={"tag": tag, "n": str(i)}) for i in range(3)
    ]
    other = BaseSandbox.create(timeout=120, metadata={"tag": "someone-else"})
    try:
        paginator = BaseSandbox.list(query=SandboxQuery(metadata={"tag": tag}), limit=2)
        first = paginator.next_items()
        assert len(first) == 2 and paginator.has_next
        second = paginator.next_items()
        assert len(second) == 1 and not paginator.has_next
        found = {s.sandbox_id for s in first + second}
        assert found == {s.sandbox_id for s in created}
        one = BaseSandbox.list(query=SandboxQuery(metadata={"tag": tag, "n": "1"})).next_items()
        assert [s.sandbox_id for s in one] == [created[1].sandbox_id]
    finally:
        for sbx in [*created, other]:
            sbx.kill()


# Values the SDK quotes and then url-encodes again; E2B's API unescapes twice.
AWKWARD_METADATA = {
    "owner": "ann@example.com",
    "user": "user:42",
    "title": "my run + 100% ünïcode",
    "a=b&c": "x=y&z",
}


def test_list_filters_by_metadata_that_needs_escaping() -> None:
    """Every key and value matches as written (values with '@', ':', spaces, '+', '%', '=',
    '&' or non-ASCII matched nothing: the filter was unescaped once instead of twice)."""
    tag = uuid.uuid4().hex
    sbx = BaseSandbox.create(timeout=120, metadata={"tag": tag, **AWKWARD_METADATA})
    try:
        for key, value in AWKWARD_METADATA.items():
            query = SandboxQuery(metadata={"tag": tag, key: value})
            found = [s.sandbox_id for s in BaseSandbox.list(query=query).next_items()]
            assert found == [sbx.sandbox_id], (key, value)
        wrong = SandboxQuery(metadata={"tag": tag, "owner": "ann@example.org"})
        assert BaseSandbox.list(query=wrong).next_items() == []

        async def listed_async() -> list[str]:
            query = SandboxQuery(metadata={"tag": tag, "title": AWKWARD_METADATA["title"]})
            items = await AsyncBaseSandbox.list(query=query).next_items()
            return [s.sandbox_id for s in items]

        assert asyncio.run(listed_async()) == [sbx.sandbox_id]
    finally:
        sbx.kill()


def test_pause_then_connect_resumes_with_state_kept() -> None:
    sbx = BaseSandbox.create(timeout=120, metadata={"tag": uuid.uuid4().hex})
    try:
        sbx.files.write("/home/user/kept.txt", "still here")
        handle = sbx.commands.run("sleep 600", background=True, timeout=0)
        assert sbx.pause() is True
        assert sbx.get_info().state == SandboxState.PAUSED
        assert sbx.is_running() is False
        assert sbx.pause() is False  # 409: already paused
        paused = BaseSandbox.list(
            query=SandboxQuery(state=[SandboxState.PAUSED], metadata=sbx.get_info().metadata)
        ).next_items()
        assert [s.sandbox_id for s in paused] == [sbx.sandbox_id]
        resumed = BaseSandbox.connect(sbx.sandbox_id)
        assert resumed.get_info().state == SandboxState.RUNNING
        assert resumed.is_running()
        assert resumed.files.read("/home/user/kept.txt") == "still here"
        assert handle.pid in [p.pid for p in resumed.commands.list()]
    finally:
        sbx.kill()


def _kernel_says_frozen(pid: int) -> bool:
    """The kernel's own word on the cgroup freezer of a host process's group: whether every
    process in it has stopped (v1 reads FROZEN, not FREEZING; v2 reports ``frozen 1``)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, group = line.split(":", 2)
        if "freezer" in controllers.split(","):
            return Path(f"/sys/fs/cgroup/freezer{group}/freezer.state").read_text() == "FROZEN\n"
        if controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            return "frozen 1" in Path(f"/sys/fs/cgroup{group}/cgroup.events").read_text()
    pytest.skip("this host gives sandboxes no cgroup freezer (pause stops each process)")


def test_nothing_in_the_sandbox_runs_once_pause_is_answered() -> None:
    # Freezing is asynchronous: the processes run on for milliseconds after the freezer is
    # set. Busy loops that fork all the time are the slowest to stop.
    sbx = BaseSandbox.create(timeout=120)
    tag = marker()
    try:
        for _ in range(4):
            loop = f"exec -a {tag} bash -c 'while :; do /bin/true; done'"
            sbx.commands.run(loop, background=True, timeout=0)
        wait_for(lambda: bool(host_pids_with(tag)), what="the busy loops")
        for _ in range(10):
            assert sbx.pause() is True
            pid = host_pids_with(tag)[0]
            assert _kernel_says_frozen(pid), "pause answered while the sandbox still ran"
            BaseSandbox.connect(sbx.sandbox_id)  # resumes
            assert not _kernel_says_frozen(pid)
    finally:
        sbx.kill()


def test_expiry_really_kills_the_sandbox() -> None:
    sbx = BaseSandbox.create(timeout=60)  # the short timeout is set once the process runs
    tag = marker()
    sbx.commands.run(f"exec -a {tag} sleep 600", background=True, timeout=0)
    wait_for(lambda: bool(host_pids_with(tag)), what="the marked process to start")
    sbx.set_timeout(3)
    wait_for(lambda: not sbx.is_running(), timeout=60, what="the sandbox to expire")
    with pytest.raises(NotFoundException):
        sbx.get_info()
    wait_for(lambda: not host_pids_with(tag), what="the expired sandbox's processes to die")


def test_expiry_with_auto_pause_pauses_instead() -> None:
    sbx = BaseSandbox.create(timeout=60, lifecycle={"on_timeout": "pause"})
    try:
        sbx.files.write("a.txt", "x")
        sbx.set_timeout(3)  # once the file is there
        wait_for(
            lambda: sbx.get_info().state == SandboxState.PAUSED,
            timeout=60,
            what="auto-pause at timeout",
        )
        resumed = BaseSandbox.connect(sbx.sandbox_id, timeout=60)
        assert resumed.files.read("a.txt") == "x"
    finally:
        sbx.kill()


def test_metrics() -> None:
    sbx = BaseSandbox.create(timeout=60)
    try:
        metrics = sbx.get_metrics()
        assert metrics and metrics[0].mem_total > 0 and metrics[0].cpu_count >= 1
    finally:
        sbx.kill()


def test_invalid_timeouts_are_400_sandbox_exceptions() -> None:
    with pytest.raises(SandboxException, match="400: timeout must be between"):
        BaseSandbox.create(timeout=-5)
    with pytest.raises(SandboxException, match="400"):
        BaseSandbox.create(timeout=10**9)
    sbx = BaseSandbox.create(timeout=60)
    try:
        with pytest.raises(SandboxException, match="400"):
            sbx.set_timeout(-1)
        with pytest.raises(NotFoundException):
            BaseSandbox.set_timeout("nosuchsandbox0000000", 30)
    finally:
        sbx.kill()


def test_wrong_api_key_is_authentication_exception() -> None:
    service = start_in_thread(api_key="the-right-key")
    try:
        opts = {"api_url": service.url, "sandbox_url": service.url}
        with pytest.raises(AuthenticationException):
            BaseSandbox.create(api_key="a-wrong-key", **opts)
        assert BaseSandbox.list(api_key="the-right-key", **opts).next_items() == []
    finally:
        service.stop()


def test_async_lifecycle() -> None:
    asyncio.run(_async_lifecycle())


async def _async_lifecycle() -> None:
    sbx = await AsyncSandbox.create(timeout=90, metadata={"mode": "async"})
    try:
        assert await sbx.is_running()
        info = await sbx.get_info()
        assert info.metadata == {"mode": "async"}
        await sbx.set_timeout(300)
        assert (await sbx.get_info()).end_at - info.end_at > timedelta(seconds=100)
        assert await sbx.pause() is True
        again = await AsyncBaseSandbox.connect(sbx.sandbox_id)
        assert await again.is_running()
    finally:
        assert await sbx.kill() is True
    assert await sbx.is_running() is False
    assert await AsyncBaseSandbox.kill(sbx.sandbox_id) is False


def test_kill_is_fast_and_complete() -> None:
    sbx = BaseSandbox.create(timeout=60)
    tag = marker()
    sbx.commands.run(
        f"for i in 1 2 3; do (exec -a {tag} sleep 600 &) ; done; exec -a {tag} sleep 600",
        background=True,
        timeout=0,
    )
    wait_for(lambda: len(host_pids_with(tag)) >= 4, what="four marked processes")
    assert sbx.kill()
    wait_for(lambda: not host_pids_with(tag), what="every process of the killed sandbox to die")


def test_auto_resume_on_traffic_to_a_paused_sandbox() -> None:
    sbx = BaseSandbox.create(timeout=60, lifecycle={"on_timeout": "pause", "auto_resume": True})
    try:
        sbx.files.write("kept.txt", "yes")
        assert sbx.pause()
        assert sbx.get_info().state == SandboxState.PAUSED
        # Traffic to the sandbox itself wakes it, as E2B's proxy does with autoResume.
        assert sbx.files.read("kept.txt") == "yes"
        assert sbx.get_info().state == SandboxState.RUNNING
    finally:
        sbx.kill()


def test_paused_sandbox_without_auto_resume_is_not_running() -> None:
    sbx = BaseSandbox.create(timeout=60)
    try:
        assert sbx.pause()
        assert not sbx.is_running()
        assert sbx.get_info().state == SandboxState.PAUSED
    finally:
        sbx.kill()


def test_list_started_after_and_template_filters() -> None:
    tag = uuid.uuid4().hex
    first = BaseSandbox.create(timeout=60, metadata={"tag": tag})
    try:
        cutoff = first.get_info().started_at
        second = BaseSandbox.create(timeout=60, metadata={"tag": tag})
        try:
            wait_for(lambda: second.get_info().started_at > cutoff, what="a later start time")
            query = SandboxQuery(metadata={"tag": tag}, started_after=cutoff + timedelta(0, 0, 1))
            later = BaseSandbox.list(query=query).next_items()
            assert [s.sandbox_id for s in later] == [second.sandbox_id]
            by_template = SandboxQuery(metadata={"tag": tag}, template="no-such-template")
            assert BaseSandbox.list(query=by_template).next_items() == []
        finally:
            second.kill()
    finally:
        first.kill()


def test_a_create_repeated_with_its_idempotency_key_gets_the_same_sandbox() -> None:
    """The SDK retries a create that failed on the way with the same key: the retry must
    get the first attempt's sandbox, not a second one; the key with another request is
    refused (E2B's idempotency_request_mismatch)."""
    key = f"retry-{uuid.uuid4().hex}"
    first = BaseSandbox.create(timeout=120, metadata={"try": key}, idempotency_key=key)
    try:
        again = BaseSandbox.create(timeout=120, metadata={"try": key}, idempotency_key=key)
        assert again.sandbox_id == first.sandbox_id
        listed = BaseSandbox.list(query=SandboxQuery(metadata={"try": key})).next_items()
        assert [s.sandbox_id for s in listed] == [first.sandbox_id]
        with pytest.raises(SandboxException, match=r"409.*used for another request"):
            BaseSandbox.create(timeout=120, metadata={"other": "body"}, idempotency_key=key)
        other = BaseSandbox.create(timeout=120, metadata={"try": key})  # no key: a new one
        assert other.sandbox_id != first.sandbox_id
        other.kill()
    finally:
        first.kill()


def test_concurrent_creates_with_one_idempotency_key_make_one_sandbox() -> None:
    key = f"race-{uuid.uuid4().hex}"

    async def race() -> set[str]:
        made = await asyncio.gather(
            *(AsyncBaseSandbox.create(timeout=120, idempotency_key=key) for _ in range(3))
        )
        ids = {s.sandbox_id for s in made}
        for sandbox in made[:1]:
            await sandbox.kill()
        return ids

    assert len(asyncio.run(race())) == 1


def test_volumes_are_refused_plainly_never_dropped() -> None:
    """The local service has no persistent volumes: a create that asks for one is refused
    (it was created with nothing mounted), and the volume API says why (it was a 404)."""
    from e2b import Volume
    from e2b.exceptions import VolumeException

    with pytest.raises(SandboxException, match="volumes are not available in the local"):
        BaseSandbox.create(timeout=60, volume_mounts={"/data": "no-such-volume"})
    for call in (lambda: Volume.create("v1"), lambda: Volume.list()):
        with pytest.raises(VolumeException, match="volumes are not available in the local"):
            call()
