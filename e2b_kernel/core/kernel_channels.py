"""One WebSocket to a Jupyter Server's kernel channels, carrying Jupyter messages both ways.

Messages travel as their serialized parts ``[header, parent_header, metadata, content,
*buffers]`` (bytes), never re-encoded on the ``v1.kernel.websocket.jupyter.org`` subprotocol:
what the remote ipykernel sent is what the local front end gets, buffers included. Servers that
do not offer v1 get jupyter_server's older JSON protocol (binary frames when there are buffers).

Sends are queued in order and written by one task, so messages sent before the socket is open,
and before the remote kernel's IOPub reaches it, wait for that instead of being lost.

:meth:`KernelChannels.open` returns only once the remote kernel's IOPub reaches this socket. The
Jupyter Server subscribes a new connection's IOPub asynchronously and checks that it is live
("nudges" it with kernel_info requests) only for new connections to idle kernels: a
connection opened while the kernel is busy, or re-attached to its earlier session, gets no such
check, and IOPub messages published before the subscription is live are lost (a front end then
waits for an 'idle' that never comes). So we nudge ourselves, on the control channel (answered
even while a cell runs), and swallow the nudges' messages. We do it again when the server says
it restarted the kernel process (see :func:`kernel_died`), holding the front end's messages
until the new process answers, and already from a reply that says the process ends
(``exit()``): a cell sent before the server noticed would run in the new process before the
server listens to its IOPub, and its output would be lost.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import struct
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from ..errors import MessageTooLarge
from .jupyter_server import JupyterEndpoint

__all__ = [
    "CATCH_UP_FOR",
    "DEATH_NOTICES",
    "LOST_OUTPUT_NOTE",
    "SERVER_MESSAGE_LIMIT",
    "V1_PROTOCOL",
    "KernelChannels",
    "KernelChannelsError",
    "Parts",
    "decode",
    "encode",
    "encoded_size",
    "kernel_died",
    "silent_execute",
    "too_large",
]

V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"
Parts = list[bytes]
_FIELDS = ("header", "parent_header", "metadata", "content")
# How long open() waits for the remote kernel's IOPub to answer a nudge: a kernel answers
# control requests within milliseconds, even while busy, so this only bounds a broken server.
IOPUB_READY_TIMEOUT = 20.0
_NUDGE_EVERY = 0.5  # seconds between nudges while no IOPub message has answered one
_NUDGES_KEPT = 64  # the latest nudges' ids, whose answers are recognised (and kept here)
# How long, after a reply saying the kernel process ends (``exit()``), the front end's messages
# wait for the server's notice that it restarted it (its restarter polls every few seconds);
# past that they are sent all the same: the process did not end, or the server has no restarter.
EXIT_NOTICE_WAIT = 10.0
# How long a cell replied to with none of its IOPub status may wait for IOPub to catch up
# (see KernelChannels.iopub_caught_up) before it is ended as lost all the same.
CATCH_UP_FOR = 20.0
LOST_OUTPUT_NOTE = (
    "[e2b-kernel] This cell ran, but its output was lost: the remote kernel sent it before "
    "the sandbox's Jupyter Server was listening (as happens right after the server restarts "
    "the kernel process). Run the cell again to see it.\n"
)


# The most a Jupyter Server takes in one WebSocket message: Tornado's default
# websocket_max_message_size, which Jupyter Server and E2B's template keep. A larger one
# closes the socket (error 1009), and the message is lost.
SERVER_MESSAGE_LIMIT = 10 * 1024 * 1024


def encoded_size(channel: str, parts: Parts) -> int:
    """The size of ``parts`` as one v1 WebSocket message (see :func:`encode`); about that on
    the older JSON protocol."""
    return 8 * (len(parts) + 3) + len(channel) + sum(len(part) for part in parts)


def too_large(channel: str, parts: Parts, what: str, fix: str) -> MessageTooLarge | None:
    """The error for a message the server would not take (sent, it would close the socket
    and be lost, and a running cell's output with it); None when it fits. ``what`` names the
    message ("This cell"), ``fix`` says what to do instead."""
    size = encoded_size(channel, parts)
    if size <= SERVER_MESSAGE_LIMIT:
        return None
    mib = 1024 * 1024
    return MessageTooLarge(
        f"{what} is {size / mib:.1f} MiB; the sandbox's Jupyter Server takes at most "
        f"{SERVER_MESSAGE_LIMIT // mib} MiB in one message. {fix}"
    )


def silent_execute(code: str, user_expressions: dict[str, str] | None = None) -> dict[str, Any]:
    """An ``execute_request``'s content that runs ``code`` for us alone: no output, history,
    execution count or ``execute_input``, and no abort of what comes after it."""
    return {
        "code": code,
        "silent": True,
        "store_history": False,
        "user_expressions": user_expressions or {},
        "allow_stdin": False,
        "stop_on_error": False,
    }


class KernelChannelsError(Exception):
    """The kernel channels opened, but the remote kernel's IOPub never reached them."""


# ---- codecs (pure) ---------------------------------------------------------------------------


def encode(protocol: str | None, channel: str, parts: Parts) -> bytes | str:
    """One WebSocket message for ``parts`` on ``channel``."""
    if protocol == V1_PROTOCOL:
        # 8-byte little-endian count, offsets of channel and each part, then the bytes.
        chunks = [channel.encode(), *parts]
        offsets = [8 * (len(chunks) + 2)]
        for chunk in chunks:
            offsets.append(offsets[-1] + len(chunk))
        head = struct.pack(f"<{len(offsets) + 1}Q", len(offsets), *offsets)
        return head + b"".join(chunks)
    msg: dict[str, Any] = dict(zip(_FIELDS, map(json.loads, parts[:4]), strict=True))
    msg["channel"] = channel
    buffers = parts[4:]
    if not buffers:
        return json.dumps(msg)
    # Legacy binary form: big-endian count and offsets, the JSON, then the buffers.
    msg["buffers"] = []
    chunks = [json.dumps(msg).encode(), *buffers]
    offsets = [4 * (len(chunks) + 1)]
    for chunk in chunks[:-1]:
        offsets.append(offsets[-1] + len(chunk))
    return struct.pack(f"!{len(chunks) + 1}I", len(chunks), *offsets) + b"".join(chunks)


def decode(protocol: str | None, data: bytes | str) -> tuple[str, Parts]:
    """``(channel, parts)`` of one WebSocket message."""
    if protocol == V1_PROTOCOL:
        assert isinstance(data, bytes)
        count = struct.unpack_from("<Q", data)[0]
        offsets = struct.unpack_from(f"<{count}Q", data, 8)
        channel = data[offsets[0] : offsets[1]].decode()
        return channel, [data[a:b] for a, b in itertools.pairwise(offsets[1:])]
    buffers: list[bytes] = []
    if isinstance(data, bytes):
        count = struct.unpack_from("!I", data)[0]
        bounds = [*struct.unpack_from(f"!{count}I", data, 4), len(data)]
        chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
        data, buffers = chunks[0].decode(), chunks[1:]
    msg = json.loads(data)
    parts = [json.dumps(msg.get(name) or {}).encode() for name in _FIELDS]
    return str(msg.get("channel") or "shell"), parts + buffers


# The message types kernel_died() can name; callers parse a message's content only for these.
DEATH_NOTICES = frozenset({"status", "shutdown_reply"})


def kernel_died(channel: str, msg_type: str, parent_id: str | None, content: dict) -> str | None:
    """``restarting`` or ``dead`` when this is the Jupyter Server's own notice that the kernel
    process died (restarted by the server, or not); ``restarted`` when it is the kernel's
    ``shutdown_reply`` to a restart (another client of the server restarted it through its
    REST API: the server asks the process to end, then starts a new one); None otherwise.

    Both come on IOPub; the server's notice has no parent. Requests still waiting then never
    get their reply or their 'idle', so whoever waits on one must end it. (A caller that
    relays shutdown requests itself must not take the replies to its own for this.)
    """
    if channel != "iopub":
        return None
    if msg_type == "shutdown_reply":
        return "restarted" if content.get("restart") else None
    if msg_type != "status" or parent_id:
        return None
    state = content.get("execution_state")
    return str(state) if state in ("restarting", "dead") else None


def _msg_id(parts: Parts) -> str:
    """The msg_id of a message of ours or of the front end ("" when it has none)."""
    try:
        return str(json.loads(parts[0]).get("msg_id") or "")
    except (ValueError, AttributeError):
        return ""


# ---- the connection --------------------------------------------------------------------------


class KernelChannels:
    """The WebSocket to one remote kernel: ordered sends, and a callback per message received.

    ``on_message(channel, parts)`` runs on the loop that called :meth:`open`; ``on_closed``
    runs once when the socket ends without :meth:`close` having been called.
    """

    def __init__(
        self,
        endpoint: JupyterEndpoint,
        kernel_id: str,
        on_message: Callable[[str, Parts], None],
        on_closed: Callable[[str], None],
        log: logging.Logger,
    ) -> None:
        self.endpoint = endpoint
        self.kernel_id = kernel_id
        self.protocol: str | None = None
        self._on_message = on_message
        self._on_closed = on_closed
        self._log = log
        # Front-end messages wait in the outbox while IOPub is not live (see renudge()); our
        # nudges do not.
        self._outbox: collections.deque[tuple[str, Parts]] = collections.deque()
        self._nudges: collections.deque[Parts] = collections.deque()
        self._wake_writer = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._tasks: list[asyncio.Task] = []
        self._reader: asyncio.Task | None = None  # ends when the socket closes
        self._closing = False
        self._session_id = uuid.uuid4().hex
        self._nudge_ids: dict[str, int] = {}  # our kernel_info_requests' msg_ids, numbered
        self._nudges_sent = 0
        self._answered = 0  # the number of the latest nudge answered on IOPub
        self._answers = asyncio.Event()  # set (and replaced) at each nudge answered on IOPub
        self._iopub_live = asyncio.Event()
        self._renudging: asyncio.Future | None = None
        self._ended_session: bytes | None = None  # see renudge()
        self._exit_wait: asyncio.TimerHandle | None = None  # see _process_ends()

    def send(self, channel: str, parts: Parts, *, first: bool = False) -> None:
        """Queue a message; it is written in order once the socket is open and the remote
        kernel's IOPub reaches it (``first``: before everything queued so far)."""
        if first:
            self._outbox.appendleft((channel, parts))
        else:
            self._outbox.append((channel, parts))
        self._wake_writer.set()

    async def open(self) -> None:
        """Connect (preferring the v1 subprotocol), start relaying, and return once the remote
        kernel's IOPub reaches us; raises :class:`KernelChannelsError` if it never does."""
        # A session id of our own: the server tells its connections to one kernel apart by it.
        path = f"api/kernels/{self.kernel_id}/channels?session_id={self._session_id}"
        self._ws = await connect(
            self.endpoint.ws_url(path),
            additional_headers=self.endpoint.headers,
            subprotocols=[Subprotocol(V1_PROTOCOL)],
            max_size=None,  # outputs (images, widget buffers) may be large
            # Jupyter Server (tornado) never compresses; offering deflate only costs CPU per
            # message wherever a proxy in between accepts it.
            compression=None,
            open_timeout=30,
        )
        self.protocol = self._ws.subprotocol
        self._log.info(
            "kernel channels open: kernel %s at %s, protocol %s",
            self.kernel_id,
            self.endpoint.describe(),
            self.protocol or "legacy JSON",
        )
        self._reader = asyncio.ensure_future(self._read(self._ws))
        self._tasks = [asyncio.ensure_future(self._write(self._ws)), self._reader]
        try:
            await self._wait_for_iopub()
        except BaseException:
            await self.close()
            raise

    @property
    def is_open(self) -> bool:
        """Whether the socket is still open (it may close before its reader's callback)."""
        return self._reader is not None and not self._reader.done() and not self._closing

    def renudge(self, ended_session: str | None = None) -> asyncio.Future:
        """The remote kernel process was restarted under us: hold what the front end sends
        until the new process answers a nudge on IOPub (what is sent to a kernel that is not
        up yet is lost, and its new IOPub subscription is not live at once either).
        ``ended_session``: the ending process's session id, when it may still answer a nudge
        (a restart asked of it): its answers do not count.

        The returned future says whether the sandbox outlived the ending process: True once a
        new process answered (or none did in time, the socket still open), False when the
        socket closed first (the sandbox may be gone: the loss decides); cancelled by
        :meth:`close`."""
        self._ended_session = ended_session.encode() if ended_session else None
        if self._exit_wait is not None:
            self._exit_wait.cancel()
            self._exit_wait = None
        self._iopub_live.clear()
        self._renudging = asyncio.ensure_future(self._renudge())
        return self._renudging

    async def _renudge(self) -> bool:
        try:
            await self._wait_for_iopub()
            return True
        except KernelChannelsError as exc:
            self._log.warning("the restarted remote kernel: %s", exc)
            return self.is_open
        finally:  # never hold the front end for ever: a failure shows in its next request
            self._set_live()

    def _set_live(self) -> None:
        self._iopub_live.set()
        self._wake_writer.set()

    def withdraw(self, msg_id: str) -> bool:
        """Take back a message still held here (its request ended before it could be sent:
        sent later, it would run with nobody waiting for it); whether it was held."""
        for index, (_channel, parts) in enumerate(self._outbox):
            if _msg_id(parts) == msg_id:
                del self._outbox[index]
                return True
        return False

    def unsent_ids(self) -> set[str]:
        """The msg_ids of the front end's messages still held here (not yet written)."""
        return {_msg_id(parts) for _channel, parts in self._outbox}

    def _process_ends(self, content: bytes) -> None:
        """A reply's ``ask_exit`` payload: the remote process ends once it is sent (``exit()``
        without ``keep_kernel``). Hold the front end's messages from now on, not only from
        the server's notice (:meth:`renudge`), which may come seconds later."""
        try:
            payloads = json.loads(content).get("payload") or []
        except (ValueError, AttributeError, RecursionError):
            return
        if not any(
            isinstance(p, dict) and p.get("source") == "ask_exit" and not p.get("keepkernel")
            for p in payloads
        ):
            return
        self._log.info(
            "the remote kernel process ends (exit()): holding requests until it restarts"
        )
        self._iopub_live.clear()
        if self._exit_wait is not None:
            self._exit_wait.cancel()
        self._exit_wait = asyncio.get_running_loop().call_later(EXIT_NOTICE_WAIT, self._set_live)

    async def _wait_for_iopub(self) -> None:
        """Nudge until an IOPub message answers a nudge (see the module's docstring)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + IOPUB_READY_TIMEOUT
        while not self._iopub_live.is_set():
            if self._reader is not None and self._reader.done():  # the socket closed meanwhile
                raise KernelChannelsError("the kernel channels closed before the kernel answered")
            left = deadline - loop.time()
            if left <= 0:
                raise KernelChannelsError(
                    f"the remote kernel's IOPub did not answer within {IOPUB_READY_TIMEOUT:.0f} s"
                )
            self._nudges.append(self._nudge())
            self._wake_writer.set()
            try:
                await asyncio.wait_for(self._iopub_live.wait(), min(_NUDGE_EVERY, left))
            except asyncio.TimeoutError:
                continue

    async def iopub_caught_up(self, timeout: float) -> bool:
        """Return True once IOPub has carried all that the remote kernel published before
        this call: an IOPub message answering a nudge sent from now on has arrived (one
        process's IOPub keeps its order). False when the socket closed or ``timeout`` passed.

        A reply whose request's IOPub status never came is told apart this way from one
        that only overtook its IOPub messages (the server relays shell and IOPub from
        different sockets): a process the server has just restarted can run a request
        queued for it before the server's IOPub subscription to it is live."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        target = self._nudges_sent + 1
        while self._answered < target:
            left = deadline - loop.time()
            if left <= 0 or self._reader is None or self._reader.done() or self._closing:
                return False
            self._nudges.append(self._nudge())
            self._wake_writer.set()
            answered = self._answers
            try:
                await asyncio.wait_for(answered.wait(), min(_NUDGE_EVERY, left))
            except asyncio.TimeoutError:
                continue
        return True

    def _nudge(self) -> Parts:
        """A ``kernel_info_request`` of our own (the Jupyter Server signs what it forwards)."""
        msg_id = uuid.uuid4().hex
        self._nudges_sent += 1
        self._nudge_ids[msg_id] = self._nudges_sent
        while len(self._nudge_ids) > _NUDGES_KEPT:
            del self._nudge_ids[next(iter(self._nudge_ids))]
        header = {
            "msg_id": msg_id,
            "msg_type": "kernel_info_request",
            "username": "e2b-kernel",
            "session": self._session_id,
            "date": datetime.now(timezone.utc).isoformat(),
            "version": "5.3",
        }
        return [json.dumps(header).encode(), b"{}", b"{}", b"{}"]

    def _is_nudge_answer(self, channel: str, parts: Parts) -> bool:
        """Whether this message answers one of our nudges (it is then not passed on)."""
        # A byte search in the small parent header: no JSON parsing on the hot path.
        if len(parts) < 2 or b"kernel_info_request" not in parts[1]:
            return False
        try:
            number = self._nudge_ids.get(json.loads(parts[1]).get("msg_id"))
        except (ValueError, AttributeError, TypeError, RecursionError):
            return False
        if number is None:
            return False
        if channel == "iopub" and not (self._ended_session and self._ended_session in parts[0]):
            if number > self._answered:
                self._answered = number
                self._answers.set()
                self._answers = asyncio.Event()
            self._set_live()
        return True

    async def _next_to_write(self) -> tuple[str, Parts]:
        while True:
            if self._nudges:
                return "control", self._nudges.popleft()
            if self._outbox and self._iopub_live.is_set():
                return self._outbox.popleft()
            self._wake_writer.clear()
            await self._wake_writer.wait()

    async def _write(self, ws: ClientConnection) -> None:
        while True:
            channel, parts = await self._next_to_write()
            try:
                await ws.send(encode(self.protocol, channel, parts))
            except ConnectionClosed:
                return  # the reader reports the loss

    async def _read(self, ws: ClientConnection) -> None:
        reason = "the connection closed"
        try:
            async for data in ws:
                try:
                    channel, parts = decode(self.protocol, data)
                except Exception:
                    self._log.warning("dropped a malformed kernel message", exc_info=True)
                    continue
                if self._is_nudge_answer(channel, parts):
                    continue
                if channel == "shell" and len(parts) > 3 and b'"ask_exit"' in parts[3]:
                    self._process_ends(parts[3])
                self._on_message(channel, parts)
        except ConnectionClosed as exc:
            reason = f"the connection closed ({exc})"
        except Exception as exc:  # a bug in a callback must not pass silently
            self._log.exception("relay reader failed")
            reason = f"the relay failed ({type(exc).__name__})"
        if not self._closing:
            self._on_closed(reason)

    async def close(self) -> None:
        self._closing = True
        if self._renudging is not None:
            self._renudging.cancel()
        if self._exit_wait is not None:
            self._exit_wait.cancel()
        for task in self._tasks:
            task.cancel()
        if self._ws is not None:
            try:
                await asyncio.wait_for(self._ws.close(), 2)
            except Exception:
                pass
        if self._tasks:
            await asyncio.wait(self._tasks)
