"""uvicorn's h11 protocol with a header-read deadline and a bound on open connections.

uvicorn closes idle keep-alive connections, but a connection that sends part of a request
head (or nothing) and then waits is held forever: 1,500 of them would hold 1,500 sockets
and, with limit_concurrency, turn every real request away. Here each connection must
deliver a complete request head within `header_timeout` seconds of connecting or of the
first byte of its next request. Between requests a keep-alive connection may stay idle for
:data:`IDLE_KEEP_ALIVE` seconds, longer than the E2B SDK keeps its pooled connections (300
s): a server that closed it sooner could close it just as the SDK sent its next request on
it, which then failed with an httpx error instead of an answer. Past `max_connections` the
oldest connection still waiting for a request head is closed to make room, or else one whose
request was refused and that is only being let finish sending its body (:data:`REFUSED`):
1,500 connections that each send a request head without a key and then hold back its body
would otherwise hold every slot. A
connection mid-request is never dropped.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from . import ws_splice
from .errors import ServiceError
from .settings import DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_CONNECTIONS

log = logging.getLogger("e2b_kernel.local")

# Seconds an idle keep-alive connection is kept (uvicorn's timeout_keep_alive): past the SDK's
# pool_idle_timeout (300 s, e2b/api/__init__.py), so the SDK always lets go first.
IDLE_KEEP_ALIVE = 330

# Clients (address, port) whose request was refused and whose body the app is draining
# before it answers (app.py): they may be closed to make room, as idle connections are.
REFUSED: set[tuple[str, int]] = set()


class GuardedH11Protocol(H11Protocol):
    """One HTTP/1.1 connection; settings come from `guard_settings` on the uvicorn Config."""

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        settings = getattr(config, "guard_settings", {})
        self.header_timeout: float = settings.get("header_timeout", DEFAULT_HEADER_TIMEOUT)
        self.max_connections: int = settings.get("max_connections", DEFAULT_MAX_CONNECTIONS)
        self.websocket_target: ws_splice.Target | None = settings.get("websocket_target")
        self._header_deadline: asyncio.TimerHandle | None = None
        self._waiting_since = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()
        if len(self.connections) > self.max_connections:
            self._evict_one()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._header_deadline is None and self.waiting_for_head():
            self._arm_header_deadline()  # a keep-alive connection's next request begins
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if not self.waiting_for_head():
            self._disarm_header_deadline()  # a request head arrived: its handler owns time

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        # The upgrade takes the connection over: no request head is due any more.
        self._disarm_header_deadline()
        try:
            found = self.websocket_target(self.headers) if self.websocket_target else None
        except ServiceError as exc:  # E2B's proxy errors: unknown sandbox, closed port, token
            self.connections.discard(self)
            self.transport.write(ws_splice.error_response(exc))
            self.transport.close()
            return
        if found is None:
            super().handle_websocket_upgrade(event)
            return
        self.connections.discard(self)  # the connection is the relay's from now on
        trailing, _closed = self.conn.trailing_data
        ws_splice.start(self.transport, event.method, event.target, self.headers, trailing, *found)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Idle now, for uvicorn's keep-alive timeout; the head deadline starts with the next
        # request's first byte (already here when pipelined). Evicted first when connections
        # run short (oldest idle first).
        self._waiting_since = self.loop.time()
        if self.waiting_for_head() and self.conn.trailing_data[0]:
            self._arm_header_deadline()

    def waiting_for_head(self) -> bool:
        """True while no request is in progress on this connection."""
        return self.conn.their_state is h11.IDLE and (
            self.cycle is None or self.cycle.response_complete
        )

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._waiting_since = self.loop.time()
        self._header_deadline = self.loop.call_later(self.header_timeout, self._deadline_passed)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _deadline_passed(self) -> None:
        self._header_deadline = None
        if self.waiting_for_head() and not self.transport.is_closing():
            self.transport.close()

    def _evict_one(self) -> None:
        """Close a connection whose refused request's body is being drained, or else the one
        that has waited longest for a request head (maybe this one)."""
        guarded = [
            c
            for c in self.connections
            if isinstance(c, GuardedH11Protocol) and not c.transport.is_closing()
        ]
        refused = [c for c in guarded if c.client is not None and tuple(c.client) in REFUSED]
        if refused:
            log.debug("more than %d open connections: closing a refused one", self.max_connections)
            refused[0].transport.close()
            return
        idle = [c for c in guarded if c.waiting_for_head()]
        if not idle:
            return
        oldest = min(idle, key=lambda c: c._waiting_since)
        log.debug("more than %d open connections: closing an idle one", self.max_connections)
        oldest._disarm_header_deadline()
        oldest.transport.close()
