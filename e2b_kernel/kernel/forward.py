"""The ``jupyter`` transport's local half: routes messages between the front end and the relay.

Requests from the front end (shell, control, stdin) go to the remote kernel as they are; the
remote kernel's messages come back re-signed with the local connection's key
(``Session.send_raw`` signs the untouched parts). A reply goes to whoever sent its request:
the request's ZMQ identities are kept by ``msg_id`` until the reply comes. An
``input_request`` goes to the identities of the ``execute_request`` that asked for input,
as ipykernel does it.

Outputs and widget state that would run code in the browser are held back
(:mod:`..core.active_content`) unless the user trusts the sandbox's outputs. The only other
content we change: ``kernel_info_reply``'s banner (it says how cells are run) and
its features (no kernel subshells: the local ipykernel routes a subshell's requests itself,
before they could be relayed, and knows no remote subshell), and
E2B's derived ``e2b/data`` and ``e2b/chart`` MIME types, which E2B's kernel startup adds to
tables and plots: they are not what the code displayed, a ``python3`` notebook never has them,
and nbformat refuses to save their JSON values under non-JSON MIME types (the ``execute``
transport leaves them out too, see ``core.outputs``).
Everything runs on the shell loop (main thread), except control replies, which are handed to
the control thread's loop that owns the control stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jupyter_client.session import Session

from ..core import kernel_channels
from ..core.active_content import guard_parts
from ..core.jupyter_server import JupyterEndpoint
from ..core.kernel_channels import (
    DEATH_NOTICES,
    LOST_OUTPUT_NOTE,
    KernelChannels,
    Parts,
    kernel_died,
    silent_execute,
)
from ..core.outputs import E2B_DERIVED_MIME_TYPES, without_e2b_fields
from ..core.remote_look import PYTHON3_LOOK, notebook_session
from ..core.session import (
    TIMEOUT_GRACE,
    cell_limit,
    cell_timeout_message,
    cell_timeout_restart_message,
)
from ..errors import ExecutionTimeout, error_content

__all__ = ["JupyterForwarder", "Route", "has_reply", "send_reply"]

_FRONT_SESSIONS_KEPT = 64
_RICH_OUTPUTS = frozenset({"display_data", "execute_result", "update_display_data"})
# What may carry code for the browser (see core.active_content).
_GUARDED = _RICH_OUTPUTS | {"comm_open", "comm_msg"}
# Bytes that any content with something E2B derived holds (a cheap test before parsing it).
_DERIVED_MARKERS = (*(m.encode() for m in E2B_DERIVED_MIME_TYPES), b'"expanded"')
# The remote kernel sends a cell's reply before its 'idle', but the Jupyter Server relays the
# two from different sockets: after 'idle', the reply may still be this long on its way.
_REPLY_AFTER_IDLE_GRACE = 2.0
# How long after our interrupt a request that ends without a reply may be one it cut short.
_INTERRUPT_REACH = 10.0


def _without_e2b_fields(parts: Parts) -> Parts:
    """The message without E2B's derived MIME types (untouched when it has none)."""
    if not any(marker in parts[3] for marker in _DERIVED_MARKERS):
        return parts
    original = json.loads(parts[3])
    content = without_e2b_fields(original)
    if content == original:  # e.g. a JSON display of the code's own, which stays as sent
        return parts
    return [*parts[:3], json.dumps(content).encode(), *parts[4:]]


def _is_web_link(link: Any) -> bool:
    url = link.get("url") if isinstance(link, dict) else None
    return isinstance(url, str) and url.strip().lower().startswith(("https://", "http://"))


@dataclass
class Route:
    """Where the reply to one request goes."""

    channel: str
    idents: list[bytes]
    stream: Any
    header: dict[str, Any]


def has_reply(header: dict[str, Any]) -> bool:
    """Whether the Jupyter protocol answers this message (``*_request``; not comm messages)."""
    return str(header.get("msg_type", "")).endswith("_request")


# The requests a kernel answers (messaging spec 5.4 and ipykernel's usage_request); ipykernel
# logs any other type and answers nothing, and then so must we.
_ANSWERED_REQUESTS = frozenset(
    f"{name}_request"
    for name in (
        "execute", "inspect", "complete", "history", "is_complete", "connect", "comm_info",
        "kernel_info", "shutdown", "interrupt", "debug", "usage", "create_subshell",
        "delete_subshell", "list_subshell",
    )
)  # fmt: skip


def send_reply(
    session: Session,
    route: Route,
    content: dict[str, Any],
    send_control: Callable[[Any, Parts, list[bytes]], None],
) -> None:
    """Answer ``route``'s request with a reply of our own (control replies via its thread);
    messages that have no reply (comm messages) get none."""
    if not has_reply(route.header):
        return
    reply_type = str(route.header.get("msg_type", "unknown_request")).replace("_request", "_reply")
    if route.channel == "control":
        msg = session.msg(reply_type, content, route.header)
        send_control(route.stream, [bytes(f) for f in session.serialize(msg)[2:]], route.idents)
    else:
        session.send(route.stream, reply_type, content, route.header, ident=route.idents)


class JupyterForwarder:
    """Relays one local kernel connection to one remote kernel over :class:`KernelChannels`."""

    def __init__(
        self,
        session: Session,
        endpoint: JupyterEndpoint,
        kernel_id: str,
        *,
        sandbox_id: str | None = None,
        iopub: Any,
        stdin: Any,
        send_control: Callable[[Any, Parts, list[bytes]], None],
        banner: Callable[[], str],
        on_busy: Callable[[bool], None],
        on_closed: Callable[[str], None],
        on_died: Callable[[str, list[Route]], None],
        cell_timeout: float | None,
        log: logging.Logger,
        trust_outputs: bool = False,
    ) -> None:
        self.session = session
        self.endpoint = endpoint
        self.kernel_id = kernel_id
        self.sandbox_id = sandbox_id  # the sandbox whose Jupyter Server this relay reaches
        self.log = log
        self._iopub = iopub
        self._stdin = stdin
        self._send_control = send_control
        self._banner = banner
        self._on_busy = on_busy
        self._on_closed_cb = on_closed
        self._on_died = on_died
        self._cell_timeout = cell_timeout
        self._trust_outputs = trust_outputs  # else active content is held back (active_content)
        self._routes: dict[str, Route] = {}
        # Sessions of the front ends' requests (latest last, bounded): see _servers_own_status.
        self._front_sessions: dict[str, None] = {}
        self._running: set[str] = set()  # execute requests between 'busy' and 'idle'
        self._timers: dict[str, asyncio.TimerHandle] = {}  # per-cell timeouts by msg_id
        self._timed_out_ids: set[str] = set()  # interrupted by their timeout
        # Timed-out cells that ignored the interrupt, for which the remote kernel restarts.
        self.restarted_for_timeout: set[str] = set()
        # Timed-out cells that ended ok: their timeout error goes out with their 'idle'.
        self._fail_at_idle: dict[str, dict[str, Any]] = {}
        # The 'idle' of timed-out cells whose reply has not come yet: sent after their error.
        self._idle_after_reply: dict[str, Parts] = {}
        self._timeout_error_sent: set[str] = set()  # cells whose timeout error went out
        self._restarting_for_timeout = False  # the next death notice is that restart
        self._restarts: set[asyncio.Task] = set()
        # Our own requests, whose messages stay here, with what is still due of each: its
        # reply and its idle come over different sockets, in either order.
        self._hidden: dict[str, set[str]] = {}
        self._started: set[str] = set()  # requests the remote kernel said it is busy with
        # Requests a dead process had not started: the server may still hand them to the new
        # one, or they died in the old one's queue (see _kernel_died).
        self._orphans: set[str] = set()
        self._orphans_wait_for: str | None = None  # our request whose reply releases them
        self._died_state = ""
        self.closed_reason: str | None = None
        self._interrupting: asyncio.Future | None = None
        self._interrupted_at = float("-inf")  # loop time of our last remote interrupt
        self._settling: asyncio.Event | None = None  # set at each message while settle() waits
        # Cells replied to with none of their IOPub status yet, and the tasks that end them
        # if it never comes (see _confirm_outputs).
        self._unconfirmed: dict[str, Route] = {}
        self._confirming: set[asyncio.Task] = set()
        self.channels = KernelChannels(endpoint, kernel_id, self._from_remote, self._closed, log)

    @property
    def _look(self) -> str:
        """The hidden code that makes each new remote kernel process look like python3's,
        named after this kernel's notebook (the Jupyter Server that started us says which)."""
        return PYTHON3_LOOK + "\n" + notebook_session(os.environ.get("JPY_SESSION_NAME") or None)

    @property
    def up(self) -> bool:
        return self.closed_reason is None

    async def open(self) -> None:
        await self.channels.open()
        self._run_hidden(self._look)

    def _run_hidden(self, code: str) -> str:
        """Run code in the remote kernel before anything the front end sent that is not
        written yet; its messages are dropped (silent: no execution count, no history, no
        execute_input)."""
        msg = self.session.msg("execute_request", silent_execute(code))
        msg_id = str(msg["header"]["msg_id"])
        self._hidden[msg_id] = {"reply", "idle"}
        parts = [bytes(p) for p in self.session.serialize(msg)[2:]]
        self.channels.send("shell", parts, first=True)
        return msg_id

    async def close(self) -> None:
        self.closed_reason = self.closed_reason or "closed"
        self._cancel_timers()
        for task in (*self._confirming, *self._restarts):
            task.cancel()
        self._outputs_lost()  # their 'idle' cannot come any more
        await self.channels.close()

    # ---- front end -> remote ------------------------------------------------------------------

    def forward(
        self,
        channel: str,
        idents: list[bytes],
        stream: Any,
        parts: Parts,
        header: dict[str, Any] | None = None,
    ) -> None:
        """Send one request (its parts after the signature; ``header``: parsed already) to
        the remote kernel."""
        header = json.loads(parts[0]) if header is None else header
        session = str(header.get("session", ""))
        self._front_sessions.pop(session, None)
        self._front_sessions[session] = None
        if len(self._front_sessions) > _FRONT_SESSIONS_KEPT:
            del self._front_sessions[next(iter(self._front_sessions))]
        if channel in ("shell", "control") and has_reply(header):
            # Only requests are answered: a comm message kept here would wait forever.
            self._routes[header["msg_id"]] = Route(channel, idents, stream, header)
        self.channels.send(channel, parts)

    # ---- remote -> front end ------------------------------------------------------------------

    def _from_remote(self, channel: str, parts: Parts) -> None:
        try:
            self._relay_from_remote(channel, parts)
        except Exception:  # the sandbox's kernel can send any bytes: they must not end the relay
            self.log.warning("dropped a %s message that could not be read", channel, exc_info=True)
        if self._settling is not None:
            self._settling.set()

    def _relay_from_remote(self, channel: str, parts: Parts) -> None:
        header = json.loads(parts[0])
        msg_type = str(header.get("msg_type", ""))
        parent_id = json.loads(parts[1] or b"{}").get("msg_id")
        due = self._hidden.get(parent_id)
        if due is not None:
            if msg_type.endswith("_reply"):
                due.discard("reply")
                if parent_id == self._orphans_wait_for:
                    self._answer_orphans()
            elif msg_type == "status" and b'"idle"' in parts[3]:
                due.discard("idle")
            if not due:
                del self._hidden[parent_id]
            return
        if parent_id in self._timed_out_ids:
            parts = self._as_timeout(parent_id, msg_type, parts)
        if msg_type == "stream" and parent_id in self.restarted_for_timeout:
            return  # what its process says as the restart ends it ("Task was destroyed...")
        if channel == "iopub":
            if msg_type == "status" and self._servers_own_status(parts):
                return
            if msg_type in DEATH_NOTICES:
                content = json.loads(parts[3])
                died = kernel_died(channel, msg_type, parent_id, content)
                if died is not None and parent_id not in self._routes:
                    self._send_iopub_raw(parts, msg_type)  # front ends see it as for python3
                    self._kernel_died(died, ended_session=header.get("session"))
                    return
                state = content.get("execution_state")
                self._track_status(parent_id, state)
                if state == "idle" and parent_id in self._timed_out_ids:
                    if parent_id in self._routes:  # its reply, which becomes the timeout's
                        self._idle_after_reply[parent_id] = parts  # error, must come first
                        return
            if msg_type in _RICH_OUTPUTS:
                parts = _without_e2b_fields(parts)
            if msg_type in _GUARDED and not self._trust_outputs:
                guarded = guard_parts(msg_type, parts)
                if guarded is None:
                    self.log.warning(
                        "dropped a %s from the sandbox that could not be read", msg_type
                    )
                    return
                parts = guarded
            self._send_iopub_raw(parts, msg_type)
            return
        route = self._routes.get(parent_id) if parent_id else None
        if route is None:
            self.log.debug("no route for %s %s (parent %s)", channel, msg_type, parent_id)
            return
        if channel == "stdin":
            self.session.send_raw(self._stdin, parts, ident=route.idents)
            return
        if msg_type.endswith("_reply"):
            self._routes.pop(parent_id, None)
            if msg_type == "execute_reply" and parent_id not in self._started:
                self._confirm_outputs(parent_id, route)
            self._started.discard(parent_id)
            if msg_type == "kernel_info_reply":
                parts = self._as_local_kernel_info(parts)
            elif msg_type in ("execute_reply", "inspect_reply") and not self._trust_outputs:
                # help's pager, the inspector's bundles; unreadable, an error takes its place
                parts = guard_parts(msg_type, parts) or self._unreadable_reply(parts, msg_type)
        if route.channel == "control":
            self._send_control(route.stream, parts, route.idents)
        else:
            # Through the stream, never on its socket: a send behind the stream's back takes
            # the socket's edge-triggered read event with it, and a request arriving at that
            # moment was never read (the front end waited for ever; ipykernel's "wedge").
            self.session.send_raw(route.stream, parts, ident=route.idents)

    def _servers_own_status(self, parts: Parts) -> bool:
        """Whether a status answers a kernel_info request no front end sent: the sandbox's
        Jupyter Server checks each new connection to an idle kernel with requests of its own
        session, and their busy and idle would make a front end's status flicker after each
        restart (a python3 kernel, with no server between, publishes none)."""
        if b"kernel_info_request" not in parts[1]:  # a byte search: no JSON on the hot path
            return False
        parent = json.loads(parts[1])
        return (
            parent.get("msg_type") == "kernel_info_request"
            and str(parent.get("session", "")) not in self._front_sessions
        )

    def _unreadable_reply(self, parts: Parts, msg_type: str) -> Parts:
        self.log.warning("replaced a %s from the sandbox that could not be read", msg_type)
        content: dict[str, Any] = {
            "status": "error",
            "ename": "E2BKernelError",
            "evalue": "the sandbox's kernel sent a reply that could not be read",
            "traceback": [],
        }
        if msg_type == "execute_reply":
            content |= {"execution_count": None, "payload": [], "user_expressions": {}}
        return [*parts[:3], json.dumps(content).encode(), *parts[4:]]

    def _send_iopub_raw(self, parts: Parts, msg_type: str) -> None:
        topic = f"kernel.{self.kernel_id}.{msg_type}".encode()
        self.session.send_raw(self._iopub, parts, ident=[topic])

    def _kernel_died(self, state: str, ended_session: str | None = None) -> None:
        """The remote kernel process died or is being restarted by another client.

        Requests it had started get no reply: the front end's are answered here (by
        ``on_died``). Those it had not started may still reach the new process (the server
        hands on what it had not delivered: a cell queued behind ``exit()`` runs there, as on
        ``python3``), or were lost in the old one's queue: they wait until our first request
        to the new process is answered, which comes after all of them, and those still
        unanswered then are answered here. Later requests wait for the new process.
        """
        self.log.warning("the remote kernel died or restarts (%s)", state)
        self._cancel_timers()
        self._on_busy(False)
        if state == "dead":  # the server gave up on it: no new process will answer them
            pending = self.take_pending()
            for route in pending:  # answered now: those still held must never be sent
                self.channels.withdraw(str(route.header.get("msg_id")))
            self._on_died(state, pending)
            self.channels.renudge(None)  # as before: what comes next waits for a new process
            return
        started = [msg_id for msg_id in self._routes if msg_id in self._started]
        # Requests still held by the channels (sent after an exit() reply) go to the new
        # process: only those the old one may have had can be orphans.
        unsent = self.channels.unsent_ids()
        self._orphans |= {msg_id for msg_id in self._routes if msg_id not in self._started | unsent}
        self._started.clear()
        if self._restarting_for_timeout:  # ours, not another client's
            self._restarting_for_timeout = False
            state = "timeout"
        self._died_state = state
        new_process = self.channels.renudge(ended_session if state == "restarted" else None)
        new_process.add_done_callback(lambda done: self._answer_started(started, done))
        # The new process starts without python3's look again; our request for it is
        # written before anything not yet sent, so its reply comes after the orphans'.
        self._orphans_wait_for = self._run_hidden(self._look)

    def _answer_started(self, msg_ids: list[str], new_process: asyncio.Future) -> None:
        """Answer the requests a dead process had started, once it is known why it died.

        A killed sandbox takes its kernel down a moment before its Jupyter Server, which may
        still report the death: only a new process answering proves the sandbox outlived it
        (``KernelDied``). When the socket closed instead, the loss answers them
        (``SandboxLost`` when the sandbox is gone)."""
        if new_process.cancelled() or not new_process.result():
            return
        routes = [self._routes.pop(msg_id) for msg_id in msg_ids if msg_id in self._routes]
        if routes:
            self._on_died(self._died_state, routes)

    def _answer_orphans(self) -> None:
        orphans, self._orphans = self._orphans, set()
        routes = [self._routes.pop(msg_id) for msg_id in orphans if msg_id in self._routes]
        if routes:
            self._on_died(self._died_state, routes)

    def _as_local_kernel_info(self, parts: Parts) -> Parts:
        """The remote kernel's info with our banner, and without kernel subshells."""
        content = json.loads(parts[3])
        remote = str(content.get("banner", "")).strip()
        content["banner"] = self._banner() + (f"\n\nRemote kernel: {remote}" if remote else "")
        features = content.get("supported_features")
        if isinstance(features, list):
            content["supported_features"] = [f for f in features if f != "kernel subshells"]
        links = content.get("help_links")
        if isinstance(links, list):  # front ends open these: web pages only, no javascript:
            content["help_links"] = [link for link in links if _is_web_link(link)]
        return [*parts[:3], json.dumps(content).encode(), *parts[4:]]

    # ---- busy cells: keep-alive and per-cell timeout --------------------------------------------

    def _track_status(self, parent_id: str | None, state: str | None) -> None:
        """Busy from an execute request's 'busy' to its 'idle' (its reply may come first)."""
        if parent_id is None:
            return
        if self._unconfirmed:
            self._unconfirmed.pop(parent_id, None)  # its IOPub is live: its idle will come
        if state == "idle":
            timer = self._timers.pop(parent_id, None)
            if timer is not None:
                timer.cancel()
            header = self._fail_at_idle.pop(parent_id, None)
            if header is not None:  # its timeout's error, after all its outputs
                self.publish(header, "error", self._timeout_content())
            if parent_id in self._running:  # a cell ended (not, say, a kernel_info request)
                self._running.discard(parent_id)
                if not self._running:
                    self._on_busy(False)
            if parent_id in self._routes:
                loop = asyncio.get_running_loop()
                loop.call_later(_REPLY_AFTER_IDLE_GRACE, self._reply_if_missing, parent_id)
            return
        route = self._routes.get(parent_id)
        if state == "busy" and route is not None:
            self._started.add(parent_id)
        if state != "busy" or route is None or route.header.get("msg_type") != "execute_request":
            return
        if parent_id in self._running:
            return
        self._running.add(parent_id)
        self._on_busy(True)
        if self._cell_timeout:
            loop = asyncio.get_running_loop()
            timer = loop.call_later(self._cell_timeout, self._timed_out, parent_id)
            self._timers[parent_id] = timer

    def _reply_if_missing(self, msg_id: str) -> None:
        """A cell the remote kernel finished without a reply gets an error reply; another
        request only when our interrupt may have cut it.

        ipykernel drops the reply when a SIGINT lands in its handler outside the cell's code
        (an interrupt just as a cell ends, which here lands a round trip later, or one from
        code in the sandbox): a cell must not wait forever. Other requests without a reply
        and without an interrupt of ours are malformed ones whose handler failed: python3
        answers nothing, and neither does this.
        """
        route = self._routes.pop(msg_id, None)
        self._started.discard(msg_id)
        if route is not None and msg_id in self._idle_after_reply:  # timed out, and no reply
            self._timed_out_ids.discard(msg_id)
            if msg_id not in self._timeout_error_sent:  # (its interrupt's error, rewritten)
                self.publish(route.header, "error", self._timeout_content())
            self._timeout_error_sent.discard(msg_id)
            self._release_idle(msg_id)
            reply = {"status": "error", "execution_count": 0, **self._timeout_content()}
            send_reply(self.session, route, reply, self._send_control)
            return
        if route is None or not self.up:
            return
        msg_type = str(route.header.get("msg_type", "unknown_request"))
        if msg_type not in _ANSWERED_REQUESTS:
            return  # unknown to the kernel: python3 answers nothing either
        since_interrupt = asyncio.get_running_loop().time() - self._interrupted_at
        if msg_type != "execute_request" and since_interrupt > _INTERRUPT_REACH:
            return
        self.log.warning("the remote kernel sent no reply to %s %s", msg_type, msg_id)
        content = {
            "status": "error",
            "execution_count": 0,
            "ename": "KeyboardInterrupt",
            "evalue": "the remote kernel was interrupted before it could reply",
            "traceback": [],
        }
        send_reply(self.session, route, content, self._send_control)

    def _confirm_outputs(self, msg_id: str, route: Route) -> None:
        """A cell's reply came before any status of it: its 'busy', outputs and 'idle' may
        be behind it, or lost (see iopub_caught_up). If IOPub catches up without them, end
        the cell here: a front end waits for its 'idle'."""
        self._unconfirmed[msg_id] = route
        task = asyncio.ensure_future(self._end_if_lost(msg_id))
        self._confirming.add(task)
        task.add_done_callback(self._confirming.discard)

    async def _end_if_lost(self, msg_id: str) -> None:
        await self.channels.iopub_caught_up(kernel_channels.CATCH_UP_FOR)
        self._outputs_lost([msg_id])

    def _outputs_lost(self, msg_ids: list[str] | None = None) -> None:
        """End cells (all still unconfirmed by default) whose IOPub messages were lost: a
        note on stderr, then their 'idle'."""
        for msg_id in list(self._unconfirmed) if msg_ids is None else msg_ids:
            route = self._unconfirmed.pop(msg_id, None)
            if route is None:
                continue  # its status came
            self.log.warning("the output of cell %s was lost on the remote kernel's IOPub", msg_id)
            self.publish(route.header, "stream", {"name": "stderr", "text": LOST_OUTPUT_NOTE})
            self.publish(route.header, "status", {"execution_state": "idle"})

    def _timed_out(self, msg_id: str) -> None:
        """Interrupt the cell; its remote KeyboardInterrupt is shown as ``ExecutionTimeout``.
        If it has not stopped TIMEOUT_GRACE seconds later, the remote kernel is restarted."""
        self.log.info("cell %s timed out; interrupting the remote kernel", msg_id)
        self._timed_out_ids.add(msg_id)
        self._interrupting = asyncio.ensure_future(self.interrupt())
        loop = asyncio.get_running_loop()
        self._timers[msg_id] = loop.call_later(TIMEOUT_GRACE, self._ignored_interrupt, msg_id)

    def _ignored_interrupt(self, msg_id: str) -> None:
        """The timed-out cell caught its interrupt and runs on: only a restart of the remote
        kernel frees it for the next cells (files are kept; its reply is our timeout error)."""
        self._timers.pop(msg_id, None)
        if msg_id not in self._running or msg_id not in self._routes or not self.up:
            return  # it ended (its reply came: its 'idle' may be late), or all did
        self.log.warning(
            "cell %s ignored its timeout's interrupt: restarting the remote kernel", msg_id
        )
        self.restarted_for_timeout.add(msg_id)
        self._restarting_for_timeout = True
        task = asyncio.ensure_future(self._restart_remote(msg_id))
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _restart_remote(self, msg_id: str) -> None:
        try:
            await self.endpoint.restart(self.kernel_id)
        except Exception as exc:
            self._restarting_for_timeout = False
            self.restarted_for_timeout.discard(msg_id)  # its output is shown again
            self.log.warning("could not restart the remote kernel: %s", exc)

    def timeout_error(self, *, restarted: bool = False) -> ExecutionTimeout:
        """A timed-out cell's error; ``restarted``: the remote kernel was restarted for it."""
        limit, raise_it = cell_limit(None, self._cell_timeout)
        message = cell_timeout_restart_message if restarted else cell_timeout_message
        return ExecutionTimeout(message(limit or 0, raise_it))

    def _timeout_content(self) -> dict[str, Any]:
        return error_content(self.timeout_error())

    def _as_timeout(self, parent_id: str, msg_type: str, parts: Parts) -> Parts:
        """A timed-out cell's remote error and error reply, with the timeout's content."""
        content = json.loads(parts[3])
        if msg_type == "error":
            content = self._timeout_content()
            self._timeout_error_sent.add(parent_id)
        elif msg_type == "execute_reply":
            self._timed_out_ids.discard(parent_id)
            self._timeout_error_sent.discard(parent_id)
            if content.get("status") != "error":
                # It caught the interrupt and finished, or ended as it landed: past its
                # deadline all the same, so it fails as the setting promises (the error
                # goes out before its 'idle', or now if that came first).
                route = self._routes.get(parent_id)
                if route is not None and parent_id in self._running:
                    self._fail_at_idle[parent_id] = route.header
                elif route is not None:
                    self.publish(route.header, "error", self._timeout_content())
            content = {**content, "status": "error", **self._timeout_content()}
            self._release_idle(parent_id)
        else:
            return parts
        return [*parts[:3], json.dumps(content).encode(), *parts[4:]]

    def _release_idle(self, msg_id: str) -> None:
        idle = self._idle_after_reply.pop(msg_id, None)
        if idle is not None:
            self._send_iopub_raw(idle, "status")

    def _cancel_timers(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._fail_at_idle.clear()
        self._running.clear()
        self._timeout_error_sent.clear()
        for msg_id in list(self._idle_after_reply):
            self._release_idle(msg_id)

    # ---- interrupt, loss ----------------------------------------------------------------------

    @property
    def cell_in_flight(self) -> bool:
        """An execute request was sent and has not finished (queued, running or awaiting input)."""
        if self._running:
            return True
        return any(r.header.get("msg_type") == "execute_request" for r in self._routes.values())

    async def settle(self, timeout: float) -> None:
        """Let a running cell end before the relay closes (a restart or a shutdown): wait up
        to ``timeout`` for its error, reply and idle to be relayed, as ``python3`` sends them
        (``jupyter_client`` interrupts a kernel before it restarts or shuts it down; a second
        interrupt of ours could land while the remote kernel reports the first, and lose its
        error). What is still pending then is for the caller to answer."""
        if not self.up or not self.cell_in_flight:
            return
        loop = asyncio.get_running_loop()
        self._settling = asyncio.Event()
        deadline = loop.time() + timeout
        try:
            while self.up and self.cell_in_flight and loop.time() < deadline:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._settling.wait(), deadline - loop.time())
                self._settling.clear()
        finally:
            self._settling = None

    async def interrupt(self) -> None:
        """Interrupt the remote kernel through the Jupyter Server's REST API."""
        self._interrupted_at = asyncio.get_running_loop().time()
        try:
            await self.endpoint.interrupt(self.kernel_id)
        except Exception as exc:
            self.log.warning("could not interrupt the remote kernel: %s", exc)

    def publish(self, parent: dict[str, Any], msg_type: str, content: dict[str, Any]) -> None:
        """Publish one IOPub message of our own (a notice, an error) for request ``parent``."""
        self.session.send(
            self._iopub,
            msg_type,
            content,
            parent={"header": parent},
            ident=[f"kernel.{self.kernel_id}.{msg_type}".encode()],
        )

    def _closed(self, reason: str) -> None:
        self.closed_reason = reason
        self._cancel_timers()
        self._outputs_lost()  # their 'idle' cannot come any more
        if self._settling is not None:
            self._settling.set()  # nothing more will come: settle() stops waiting
        self._on_closed_cb(reason)

    def take_pending(self) -> list[Route]:
        """The requests still waiting for a reply (after a loss); they are forgotten here."""
        routes, self._routes = list(self._routes.values()), {}
        self._started.clear()
        self._orphans.clear()
        return routes
