"""A create request sent before the session asks for its sandbox, and claimed by it.

Against a running service that serves every sandbox port at one URL (``e2b-kernel local`` left
running), the kernel creates its sandbox with one plain request (see .quick_create). Sent once
ipykernel is imported and the kernel configured, the request and the service's work came on
top of the kernel's start. ``python -m e2b_kernel`` therefore sends it as the process starts
(backends/early_sandbox.py), on a thread, with the settings the environment alone gives; the
service creates the sandbox while the kernel imports. The session then :func:`claim`\\ s it
only when its own request, from its full configuration (config files, command line), would be
exactly the same one; any other sandbox sent for is deleted unused (:func:`discard`).

Once created, the same thread asks what the kernel asks next, all at once: whether the
sandbox's Jupyter Server answers, its code contexts and its kernels. When they name the
default Python context's running kernel, the answers are kept for the kernel's own first
requests (``JupyterEndpoint.answer_ahead``); otherwise the kernel asks for itself.

Until the session's keep-alive has taken over (its first refresh, after the claim and the reply),
the thread keeps the sandbox from dying of its timeout: with a short
``E2B_KERNEL_SANDBOX_TIMEOUT`` on a slow or busy machine, the kernel's imports, or the first
look, can outlast it, and the first cell would then find its sandbox expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .jupyter_server import CONTEXTS_PORT, JUPYTER_PORT, JupyterEndpoint, endpoint_at
from .quick_create import CreatedSandbox, QuickTarget, create, delete, refresh

__all__ = ["Claimed", "claim", "discard", "pending", "send"]


@dataclass
class _Sent:
    target: QuickTarget
    body: dict[str, Any]
    reply: Future[CreatedSandbox | None] = field(default_factory=Future)
    # Discarded, or its claimer's keep-alive has taken over: the thread stops refreshing.
    settled: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Claimed:
    """A claimed request: its reply, and the thread that keeps the sandbox alive meanwhile."""

    _sent: _Sent

    @property
    def reply(self) -> Future[CreatedSandbox | None]:
        return self._sent.reply

    def settle(self) -> None:
        """The claimer keeps the sandbox alive now (or let it go): stop refreshing it. Until
        then the thread refreshes it, however long the reply and the claimer take."""
        self._sent.settled.set()


_sent: _Sent | None = None
_lock = threading.Lock()


def send(target: QuickTarget, body: dict[str, Any]) -> None:
    """Send the create request on a thread of its own (once per process)."""
    global _sent
    with _lock:
        if _sent is not None:
            return
        sent = _sent = _Sent(target, body)
    threading.Thread(target=_create, args=(sent,), name="e2b-create-ahead", daemon=True).start()


def _create(sent: _Sent) -> None:
    try:
        sent.reply.set_result(asyncio.run(_create_and_look(sent)))
    except BaseException as exc:  # raised to the session that claims it, as its own would be
        sent.reply.set_exception(exc)


async def _create_and_look(sent: _Sent) -> CreatedSandbox | None:
    created = await create(sent.target, sent.body)
    if created is not None:
        timeout = sent.body.get("timeout")
        if isinstance(timeout, int):  # from now on: the first look alone can outlast it
            threading.Thread(
                target=_keep_alive_until_settled,
                args=(sent, created.sandbox_id, timeout),
                name="e2b-create-ahead-keepalive",
                daemon=True,
            ).start()
        await _first_look(created)
    return created


def _keep_alive_until_settled(sent: _Sent, sandbox_id: str, timeout: int) -> None:
    """Refresh the sandbox's timeout as the session's keep-alive does (every third of it, at
    least every minute: ``SessionConfig.keepalive_interval``) until it is claimed or
    discarded; the session's keep-alive refreshes within a third of it after the claim."""
    interval = max(0.5, min(60.0, timeout / 3))
    while not sent.settled.wait(interval):
        with contextlib.suppress(Exception):  # gone or unreachable: the session will see
            asyncio.run(refresh(sent.target, sandbox_id, timeout))


def _endpoints(created: CreatedSandbox) -> tuple[JupyterEndpoint, JupyterEndpoint]:
    """The sandbox's Jupyter Server and code-context server, as the session reaches them."""
    token = created.traffic_access_token
    return (
        endpoint_at(created.sandbox_url, created.sandbox_id, JUPYTER_PORT, token),
        endpoint_at(created.sandbox_url, created.sandbox_id, CONTEXTS_PORT, token),
    )


async def _first_look(created: CreatedSandbox) -> None:
    jupyter, contexts_server = _endpoints(created)
    answers = await asyncio.gather(
        jupyter.probe(),
        contexts_server.list_contexts(),
        jupyter.list_kernels(),
        return_exceptions=True,
    )
    problem, contexts, kernels = answers
    if problem is not None or isinstance(contexts, BaseException):
        return  # (a probe's failure is its answer, never an exception)
    if isinstance(kernels, BaseException):
        return
    running = {str(k.get("id")) for k in kernels}
    if not any(c.get("language") == "python" and str(c.get("id")) in running for c in contexts):
        return  # the default context is not up yet: what the kernel asks later will say more
    jupyter.answer_ahead("probe", problem)
    contexts_server.answer_ahead("list_contexts", contexts)
    jupyter.answer_ahead("list_kernels", kernels)


def pending() -> bool:
    """Whether a request was sent that is neither claimed nor discarded yet."""
    with _lock:
        return _sent is not None


def claim(target: QuickTarget, body: dict[str, Any]) -> Claimed | None:
    """The request sent ahead when it is the request the caller would send (it is the
    caller's then, and no one else's, and the caller must :meth:`Claimed.settle` it);
    otherwise None, and a sandbox created for another request is deleted."""
    global _sent
    with _lock:
        sent, _sent = _sent, None
    if sent is None:
        return None
    if sent.target == target and sent.body == body:
        return Claimed(sent)
    sent.settled.set()
    _delete_when_created(sent)
    return None


def discard() -> None:
    """Delete the sandbox sent for if nobody claimed it (on a thread: the caller goes on)."""
    global _sent
    with _lock:
        sent, _sent = _sent, None
    if sent is not None:
        sent.settled.set()
        _delete_when_created(sent)


def _delete_when_created(sent: _Sent) -> None:
    def delete_it() -> None:
        # Nothing to do when nothing was created, or when the service is gone with it.
        with contextlib.suppress(Exception):
            created = sent.reply.result()
            if created is not None:
                for endpoint in _endpoints(created):
                    endpoint.forget_answers_ahead()
                asyncio.run(delete(sent.target, created.sandbox_id))

    threading.Thread(target=delete_it, name="e2b-create-ahead-discard", daemon=True).start()
