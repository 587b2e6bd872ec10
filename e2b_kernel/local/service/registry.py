"""The service's sandbox store: ids, lifecycle state, timeouts and expiry."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import secrets
import string
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from ..sandbox import LocalSandbox
from ..sandbox.isolation import Isolation
from .metrics import MetricsSampler
from .pool import Ready, WarmPool
from .settings import DEFAULT_POOL_SIZE
from .snapshot_store import SnapshotStore

log = logging.getLogger("e2b_kernel.local")

DEFAULT_TIMEOUT = 300  # lenient: E2B's API defaults to 15 s when the body has none
MAX_TIMEOUT = 24 * 3600  # E2B Pro's maximum sandbox lifetime
_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_sandbox_id() -> str:
    """A fresh id: 20 lowercase alphanumerics, like E2B's (no '-', it is a host label)."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(20))


def _disk_mb(metadata: dict[str, str]) -> int | None:
    """The per-sandbox disk cap from metadata ``e2b.disk_mb`` (MiB), if given."""
    raw = metadata.get("e2b.disk_mb")
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"metadata e2b.disk_mb must be a number of MiB, got {raw!r}") from None
    if not 16 <= value <= 1024 * 1024:
        raise ValueError("metadata e2b.disk_mb must be between 16 and 1048576 MiB")
    return value


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


@dataclass
class Entry:
    """One sandbox as the control plane knows it."""

    sandbox: LocalSandbox
    template_id: str
    metadata: dict[str, str]
    started_at: datetime
    end_at: datetime
    auto_pause: bool = False
    auto_resume: bool = False
    access_token: str | None = None  # envdAccessToken: X-Access-Token on envd and /execute
    traffic_token: str | None = None  # trafficAccessToken: required on its other ports
    interpreter: Any = None  # the sandbox's CodeInterpreter ASGI app, when available
    envd_rpc: Any = None  # the sandbox's Connect-RPC ASGI app, made on first use
    metrics: MetricsSampler | None = None  # its sampled metric history
    pause_mode: str = "full"  # how it was last paused: "full" (frozen) or "filesystem"
    timeout_seconds: int = DEFAULT_TIMEOUT
    network: Any = None  # its NetworkOptions (network_opts.py), reported by get_info
    deadline_changed: asyncio.Event = field(default_factory=asyncio.Event)
    expiry_task: asyncio.Task | None = None

    @property
    def sandbox_id(self) -> str:
        """The sandbox's id."""
        return self.sandbox.sandbox_id

    @property
    def state(self) -> str:
        """ "running" or "paused"."""
        return "paused" if self.sandbox.paused else "running"


class Registry:
    """Every live sandbox of one service, with expiry timers."""

    def __init__(
        self,
        policy: Isolation,
        state_dir: Path,
        pool_size: int = DEFAULT_POOL_SIZE,
        pool_refill: bool = True,
    ) -> None:
        self.policy = policy
        self.pool = WarmPool(pool_size, self._ready_sandbox, refill=pool_refill)
        self.state_dir = state_dir
        self._entries: dict[str, Entry] = {}
        # Every sandbox made here that is still referenced: created, pooled, starting, or
        # being torn down (its teardown task holds it), whoever began its end. close() waits
        # for all of their teardowns: one the service's loop cancels as it ends leaves its
        # disk mounted and its dirs behind.
        self._made: weakref.WeakSet[LocalSandbox] = weakref.WeakSet()
        self._closing: asyncio.Future[None] | None = None
        self.snapshots = SnapshotStore(state_dir / "snapshots")

    async def create(
        self,
        *,
        template_id: str,
        timeout: int,
        metadata: dict[str, str],
        envs: dict[str, str],
        auto_pause: bool = False,
        auto_resume: bool = False,
        access_token: str | None = None,
        traffic_token: str | None = None,
        prepared: LocalSandbox | None = None,
    ) -> Entry:
        """Start a sandbox (or adopt a `prepared` one from the warm pool) and register it;
        it expires `timeout` seconds from now."""
        if prepared is not None:
            sandbox = prepared
            sandbox.to_foreground()
            sandbox.envs = dict(envs)  # every process it starts from now on gets them
            sandbox.name_template(template_id)
        else:
            sandbox = self.new_sandbox(envs, _disk_mb(metadata))
            sandbox.name_template(template_id)
            await sandbox.start()
        sandbox_id = sandbox.sandbox_id
        # A sandbox whose agent died is gone: "not found" at once, cleaned up by the sandbox.
        sandbox.on_gone(lambda: self._forget(sandbox_id))
        now = utcnow()
        entry = Entry(
            sandbox=sandbox,
            template_id=template_id,
            metadata=metadata,
            started_at=now,
            end_at=now + timedelta(seconds=timeout),
            auto_pause=auto_pause,
            auto_resume=auto_resume,
            timeout_seconds=timeout,
            access_token=access_token,
            traffic_token=traffic_token,
        )
        self._entries[sandbox_id] = entry
        self._start_metrics(entry)
        entry.expiry_task = asyncio.create_task(self._expire_when_due(entry))
        return entry

    def new_sandbox(self, envs: dict[str, str], disk_mb: int | None = None) -> LocalSandbox:
        """A sandbox object with a fresh id, not started yet."""
        sandbox = LocalSandbox(
            new_sandbox_id(),
            policy=self.policy,
            state_dir=self.state_dir,
            envs=envs,
            disk_mb=disk_mb,
        )
        self._made.add(sandbox)
        return sandbox

    async def _ready_sandbox(self) -> Ready:
        """A started sandbox with a started code interpreter, for the warm pool."""
        # Imported on a thread while the sandbox starts, not with the registry nor before the
        # start: jupyter_client (0.1-0.2 s) is only needed once the sandbox's processes run,
        # and for a private service the sandbox's Jupyter Server, started by sandbox.start(),
        # is what the kernel's first cell waits for longest.
        interpreter_module = asyncio.ensure_future(
            asyncio.to_thread(importlib.import_module, "..interpreter", __package__)
        )
        sandbox = self.new_sandbox({})
        try:
            # A refill must not slow what the machine does meanwhile (the start of the kernel
            # whose create set it off, for one): it runs on CPU time nothing else wants. A
            # pool that does not refill starts the sandbox its caller waits for: at full speed.
            await sandbox.start(in_background=self.pool.refill)
        finally:
            await asyncio.wait([interpreter_module])
        try:
            interpreter = interpreter_module.result().CodeInterpreter(sandbox)
            await interpreter.start()
        except BaseException:
            await sandbox.kill()
            raise
        return sandbox, interpreter

    @staticmethod
    def poolable(metadata: dict[str, str]) -> bool:
        """Whether a pooled sandbox (the default disk; its network starts when needed) fits
        this request."""
        return _disk_mb(metadata) is None

    def _start_metrics(self, entry: Entry) -> None:
        entry.metrics = MetricsSampler(entry.sandbox, self.policy.memory_mb * 1024 * 1024)
        entry.metrics.start()
        entry.sandbox.on_kill(entry.metrics.stop)

    def get(self, sandbox_id: str) -> Entry | None:
        """The live (running or paused) entry with this id, or None."""
        entry = self._entries.get(sandbox_id)
        if entry is None or entry.sandbox.killed.is_set():
            return None
        return entry

    def entries(self) -> list[Entry]:
        """All live entries, oldest first."""
        live = [e for e in self._entries.values() if not e.sandbox.killed.is_set()]
        return sorted(live, key=lambda e: (e.started_at, e.sandbox_id))

    def set_timeout(self, entry: Entry, seconds: int) -> None:
        """Move the end of the sandbox's life to `seconds` from now."""
        entry.end_at = utcnow() + timedelta(seconds=seconds)
        entry.timeout_seconds = seconds
        entry.deadline_changed.set()

    def extend(self, entry: Entry, seconds: int) -> None:
        """Extend (never shorten) the sandbox's life, as E2B's connect does."""
        wanted = utcnow() + timedelta(seconds=seconds)
        if wanted > entry.end_at:
            entry.end_at = wanted
            entry.deadline_changed.set()

    async def pause(self, entry: Entry) -> bool:
        """Freeze a running sandbox; False if it was already paused."""
        if entry.sandbox.paused:
            return False
        await entry.sandbox.pause()
        entry.pause_mode = "full"
        entry.deadline_changed.set()
        return True

    def resume(self, entry: Entry, seconds: int | None) -> None:
        """Thaw a paused sandbox with a fresh timeout."""
        entry.sandbox.resume()
        self.set_timeout(entry, seconds if seconds is not None else entry.timeout_seconds)

    async def kill(self, sandbox_id: str) -> bool:
        """Kill a sandbox and forget it; False if it is unknown or already gone."""
        entry = self._entries.pop(sandbox_id, None)
        if entry is None or entry.sandbox.killed.is_set():
            return False
        task = entry.expiry_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        await entry.sandbox.kill()
        return True

    def _forget(self, sandbox_id: str) -> None:
        entry = self._entries.pop(sandbox_id, None)
        if entry is not None and entry.expiry_task is not None:
            entry.expiry_task.cancel()

    async def close(self) -> None:
        """Kill every sandbox, and wait for kills already under way (service shutdown).

        Callers at once (a stop signal, uvicorn's lifespan, the service's end) share one
        close, and each waits for all of it; cancelling one caller does not cut it short. A
        later call closes again what arrived since (a create that was under way)."""
        if self._closing is None or self._closing.done():
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        await self.pool.close()
        await asyncio.gather(*(self.kill(sid) for sid in list(self._entries)))
        # Sandboxes no entry or pool holds any more: an agent's exit, a kill or a start
        # under way. LocalSandbox.kill is idempotent and waits for the one teardown.
        await asyncio.gather(*(sandbox.kill() for sandbox in list(self._made)))

    async def _expire_when_due(self, entry: Entry) -> None:
        """Kill (or pause, with autoPause) the sandbox when its end time passes."""
        while not entry.sandbox.killed.is_set():
            entry.deadline_changed.clear()
            if entry.sandbox.paused:
                await entry.deadline_changed.wait()  # paused sandboxes do not expire
                continue
            remaining = (entry.end_at - utcnow()).total_seconds()
            if remaining > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(entry.deadline_changed.wait(), remaining)
                continue
            if entry.auto_pause:
                log.info("sandbox %s timed out: pausing (autoPause)", entry.sandbox_id)
                try:
                    await self.pause(entry)
                    continue
                except OSError:
                    log.exception("sandbox %s: pause failed, killing it", entry.sandbox_id)
            log.info("sandbox %s timed out: killing it", entry.sandbox_id)
            await self.kill(entry.sandbox_id)
            return
