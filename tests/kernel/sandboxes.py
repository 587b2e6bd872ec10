"""Look at sandboxes on the test's local service from outside the kernel, through the SDK."""

from __future__ import annotations

import time
import uuid

from e2b import Sandbox, SandboxQuery, SandboxState

from e2b_kernel.local import RunningService


def new_tag() -> str:
    return uuid.uuid4().hex[:12]


def _opts(service: RunningService) -> dict[str, str]:
    return {"api_key": service.api_key, "api_url": service.url, "sandbox_url": service.url}


def running_ids(service: RunningService, tag: str, *, paused_too: bool = False) -> list[str]:
    """Ids of the running (or, with ``paused_too``, also paused) sandboxes whose metadata
    carries ``test=tag``."""
    states = ("running", "paused") if paused_too else ("running",)
    query = SandboxQuery(metadata={"test": tag}, state=[SandboxState(s) for s in states])
    paginator = Sandbox.list(query=query, **_opts(service))
    ids: list[str] = []
    while True:
        items = paginator.next_items()
        ids += [
            i.sandbox_id
            for i in items
            if (i.metadata or {}).get("test") == tag
            and any(state in str(i.state).lower() for state in states)
        ]
        if not paginator.has_next:
            return ids


def wait_for_count(service: RunningService, tag: str, count: int, timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        ids = running_ids(service, tag)
        if len(ids) == count or time.monotonic() > deadline:
            return ids
        time.sleep(0.2)


def kill(service: RunningService, sandbox_id: str) -> None:
    Sandbox.kill(sandbox_id, **_opts(service))


def set_timeout(service: RunningService, sandbox_id: str, seconds: int) -> None:
    Sandbox.set_timeout(sandbox_id, seconds, **_opts(service))


def wait_for_state(
    service: RunningService, sandbox_id: str, state: str, timeout: float = 60
) -> str:
    """Poll the sandbox's state until it is ``state`` (or the deadline); return the last one."""
    deadline = time.monotonic() + timeout
    while True:
        info = Sandbox.get_info(sandbox_id, **_opts(service))
        current = str(getattr(info.state, "value", info.state))
        if current == state or time.monotonic() > deadline:
            return current
        time.sleep(0.2)
