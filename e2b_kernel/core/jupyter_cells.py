"""Cells run on the sandbox's remote Python kernel over its Jupyter Server, as a stream of events.

For a front end that is not itself a Jupyter kernel (``%%e2b``): it sends one
``execute_request`` at a time and reads back that request's messages, as Jupyter-shaped
``(msg_type, content)`` events like :meth:`SandboxSession.execute` yields, plus the ones
``/execute`` cannot carry: ``clear_output``, ``update_display_data`` (with its display id),
display metadata and ``input_request`` (answered with :meth:`JupyterCells.answer`).

- **Same kernel:** the sandbox's default Python context (:func:`.pick_remote_kernel`).
- **Interrupt:** cancelling the event stream interrupts the remote kernel through REST, but
  only once it runs our request (an interrupt sent earlier lands between requests, where
  ipykernel drops the next request's reply), and waits for the cell to end.
- **Timeout:** the same, then ``ExecutionTimeout``.
- **Loss:** the channels closing mid-cell raise ``SandboxLost`` or ``SandboxUnavailable``.
- **Environment variables for one cell:** set and restored around it (:mod:`.cell_env`).

One connection per sandbox, kept open between cells, reopened for a new sandbox.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

from jupyter_client.session import Session

from ..errors import E2BKernelError, ExecutionTimeout, KernelDied
from . import cell_env, text_plain
from .kernel_channels import (
    CATCH_UP_FOR,
    DEATH_NOTICES,
    LOST_OUTPUT_NOTE,
    KernelChannels,
    Parts,
    kernel_died,
    silent_execute,
    too_large,
)
from .outputs import without_e2b_fields
from .remote_kernel import closed_error, pick_remote_kernel, reach_remote_kernel
from .remote_look import PYTHON3_LOOK
from .session import (
    NEW_SANDBOX_NOTICE,
    Event,
    SandboxSession,
    cell_limit,
    cell_timeout_message,
    cell_timeout_restart_message,
    cell_timeout_running_message,
)
from .telemetry import execution_span

__all__ = ["JupyterCells"]

_OUTPUTS = frozenset(
    {"stream", "display_data", "update_display_data", "clear_output", "execute_result", "error"}
)
_RICH = frozenset({"display_data", "update_display_data", "execute_result"})
# Reply payloads passed on to the front end (not ask_exit: the remote exit() is not ours).
_SHOWN_PAYLOADS = frozenset({"page", "set_next_input"})
# How long an interrupted or timed-out cell may take to start and then to end; the magic's
# loop thread waits 15 s for a cancelled call, so both together stay below that.
_STOP_WAIT = 6.0
_CLOSED = "__closed__"
_DIED = "__died__"  # the remote kernel process died under the cell
_CAUGHT_UP = "__caught_up__"  # IOPub carried all the kernel published before (a lost cell?)
_HIDDEN_WAIT = 30.0  # seconds a silent helper request (environment variables) may take
_REPLY_AFTER_IDLE = 2.0  # seconds a cell's reply may trail its 'idle'

_Message = tuple[str, str, dict[str, Any]]  # channel, msg_type, content
LateOutput = Callable[[str, dict[str, Any]], None]  # (msg_type, content) of an ended cell
# Output that a cell's threads and tasks send after it ended goes to its front end's hook
# (python3 shows it in that cell), for this many of the latest cells.
_LATE_CELLS = 16
_LATE_OUTPUTS = frozenset({"stream", "display_data", "update_display_data", "clear_output"})


def _as_shown(msg_type: str, content: dict[str, Any]) -> dict[str, Any]:
    """An output's content without E2B's derived fields. The /execute transport's carrier
    (see .text_plain), when a cell there installed it in this kernel, is dropped: the remote
    ``text/plain`` is exact already."""
    if msg_type in _RICH:
        content = without_e2b_fields(content)
        content["data"] = text_plain.restore(dict(content.get("data") or {}))
    return content


class _Cell:
    """One execute request in flight: its messages, and whether the remote kernel ran it."""

    def __init__(self, msg_id: str) -> None:
        self.msg_id = msg_id
        self.messages: asyncio.Queue[_Message] = asyncio.Queue()
        self.started = False  # the remote kernel said 'busy' for it
        self.ended = False  # ... and then 'idle'
        self.stopped = False  # interrupted (or given up on) by us
        self.seen_busy = False  # its 'busy' has arrived (read or not): a process took it
        self.restarted = False  # it ignored its timeout's interrupt: its process was restarted
        self.asking = False  # its input_request went to the front end, not answered yet
        self.catching_up: asyncio.Task | None = None  # see JupyterCells._catch_up

    async def next(self, timeout: float | None) -> _Message:
        """The next message; ``TimeoutError`` after ``timeout`` seconds."""
        message = await asyncio.wait_for(self.messages.get(), timeout)
        channel, msg_type, content = message
        if channel == "iopub" and msg_type == "status":
            state = content.get("execution_state")
            self.started = self.started or state == "busy"
            self.ended = self.ended or (self.started and state == "idle")
        return message


class JupyterCells:
    """The remote kernel of ``session``'s sandbox, running cells for one front end."""

    def __init__(self, session: SandboxSession, log: logging.Logger | None = None) -> None:
        self.session = session
        self.log = log or logging.getLogger("e2b_kernel.jupyter_cells")
        self._channels: KernelChannels | None = None
        self._sandbox_id: str | None = None  # the sandbox whose kernel the channels reach
        self._closed_reason: str | None = None  # set when the channels closed by themselves
        self._cells: dict[str, _Cell] = {}
        self._late: collections.OrderedDict[str, LateOutput] = collections.OrderedDict()
        # Our requests for python3's look in a restarted kernel process, by msg_id: the cells
        # sent before one that have not started by its reply were lost with the old process.
        self._looks: dict[str, tuple[list[_Cell], str]] = {}
        # Builds our messages. Their signature is dropped (the Jupyter Server signs what it
        # passes to the kernel); a key only keeps Session from warning that it signs nothing.
        self._messages = Session(key=secrets.token_bytes(16), username="e2b-kernel")

    # ---- connection --------------------------------------------------------------------

    async def _open(self) -> KernelChannels:
        """The open channels to the current sandbox's kernel; raises when it cannot be reached."""
        session = self.session
        channels = self._channels
        if channels is not None:
            if self._closed_reason is None and self._sandbox_id == session.sandbox_id:
                return channels
            reason = self._closed_reason
            await self.close()
            if reason is not None:  # closed while idle: because the sandbox is gone?
                exc = await closed_error(session, reason)
                if session.sandbox_id is None:
                    raise exc
        endpoint = session.jupyter_endpoint()

        async def connect() -> KernelChannels:
            kernel_id, _ = await pick_remote_kernel(session, endpoint, self.log)
            opened = KernelChannels(endpoint, kernel_id, self._received, self._lost, self.log)
            await opened.open()
            # python3's look (colours for the remote tracebacks the magic raises, none of
            # E2B's derived outputs; see remote_look), as the E2B Python kernel sets it;
            # unanswered here, its messages are dropped (see _received).
            look = self._messages.msg("execute_request", silent_execute(PYTHON3_LOOK))
            opened.send("shell", self._parts(look), first=True)
            return opened

        self._channels = await reach_remote_kernel(session, connect)
        self._sandbox_id, self._closed_reason = session.sandbox_id, None
        return self._channels

    async def close(self) -> None:
        """Close the channels (the remote kernel keeps running: it is the sandbox's)."""
        channels, self._channels = self._channels, None
        self._looks.clear()
        if channels is not None:
            await channels.close()

    def _received(self, channel: str, parts: Parts) -> None:
        try:
            self._take(channel, parts)
        except Exception:  # the sandbox's kernel can send any bytes: they must not end the relay
            self.log.warning("dropped a %s message that could not be read", channel, exc_info=True)

    def _take(self, channel: str, parts: Parts) -> None:
        parent_id = json.loads(parts[1] or b"{}").get("msg_id")
        cell = self._cells.get(parent_id) if parent_id else None
        if cell is not None:
            msg_type = str(json.loads(parts[0]).get("msg_type", ""))
            content = json.loads(parts[3])
            if msg_type == "status" and content.get("execution_state") == "busy":
                cell.seen_busy = True
            cell.messages.put_nowait((channel, msg_type, content))
        elif parent_id in self._looks:
            if channel == "shell":
                waiting, state = self._looks.pop(parent_id)
                live = self._cells.values()
                self._tell_died([c for c in waiting if c in live and not c.seen_busy], state)
        elif channel == "iopub":
            header = json.loads(parts[0])
            msg_type = str(header.get("msg_type", ""))
            late = self._late.get(parent_id) if parent_id else None
            if late is not None and msg_type in _LATE_OUTPUTS:
                self._show_late(late, msg_type, json.loads(parts[3]))
                return
            if msg_type not in DEATH_NOTICES:
                return  # another client's output: its content is not even parsed
            died = kernel_died(channel, msg_type, parent_id, json.loads(parts[3]))
            if died is not None:
                self._kernel_died(died, header.get("session"))

    def _kernel_died(self, died: str, session_id: str | None) -> None:
        """The remote kernel process died (or was restarted). The cells it had started never
        end by themselves now; those sent to it that it had not started may still run in the
        new process (the server hands on what it had not delivered), so they wait for our
        request for python3's look there, which comes after them. Those the channels still
        hold (sent after an ``exit()`` reply) go to the new process after the look."""
        cells = list(self._cells.values())
        channels = self._channels
        if channels is None or died == "dead":  # no new process will take any of them
            self._tell_died(cells, died)
            return
        started = [c for c in cells if c.seen_busy]
        # Those still held here (sent after an exit() reply) go to the new process, after
        # python3's look: the old one never had them.
        unsent = channels.unsent_ids()
        sent = [c for msg_id, c in self._cells.items() if msg_id not in unsent]
        new_process = channels.renudge(session_id if died == "restarted" else None)

        # Only a new process answering proves the sandbox outlived the old one (a killed
        # sandbox's server may report its kernel's death before it goes too): when the
        # socket closes instead, the cells end as lost.
        def tell_if_the_sandbox_lives(done: asyncio.Future) -> None:
            if not done.cancelled() and done.result():
                self._tell_died(started, died)

        new_process.add_done_callback(tell_if_the_sandbox_lives)
        look = self._messages.msg("execute_request", silent_execute(PYTHON3_LOOK))
        self._looks[str(look["header"]["msg_id"])] = ([c for c in sent if not c.seen_busy], died)
        channels.send("shell", self._parts(look), first=True)

    def _show_late(self, late: LateOutput, msg_type: str, content: dict[str, Any]) -> None:
        try:
            late(msg_type, _as_shown(msg_type, content))
        except Exception:  # the front end's hook must not end the channels' reader
            self.log.exception("could not show a finished cell's late output")

    @staticmethod
    def _tell_died(cells: list[_Cell], state: str) -> None:
        for running in cells:
            running.messages.put_nowait((_DIED, _DIED, {"state": state}))

    def _lost(self, reason: str) -> None:
        self._closed_reason = reason
        for cell in self._cells.values():
            cell.messages.put_nowait((_CLOSED, _CLOSED, {"reason": reason}))

    # ---- cells -------------------------------------------------------------------------

    async def answer(self, value: str) -> None:
        """Answer the running cell's ``input_request``."""
        for cell in self._cells.values():
            cell.asking = False
        if self._channels is not None:
            reply = self._messages.msg("input_reply", {"value": value})
            self._channels.send("stdin", self._parts(reply))

    def _parts(self, msg: dict[str, Any]) -> Parts:
        return [bytes(part) for part in self._messages.serialize(msg)[2:]]

    async def execute(
        self,
        code: str,
        *,
        timeout: float | None = None,
        env_vars: dict[str, str] | None = None,
        front_end: str = "magic",
        late_output: LateOutput | None = None,
        on_unanswered: Callable[[], None] | None = None,
    ) -> AsyncIterator[Event]:
        """Run ``code`` (with ``env_vars`` set for it alone); yield its outputs,
        ``input_request`` included, as they arrive. Output its threads and tasks send once it
        has ended goes to ``late_output``; ``on_unanswered`` is called when the cell ends (its
        timeout, a loss) while its ``input_request`` waits for an answer, so the front end
        can close its prompt.

        The errors and the ``e2b.execute`` span are those of :meth:`SandboxSession.execute`.
        """
        session = self.session
        with execution_span(front_end, session.sandbox_id) as span:
            span.attributes["e2b.language"] = "python"
            announce = await session.ready()
            channels = await self._open()
            span.sandbox_id = session.sandbox_id
            if announce:
                yield ("stream", {"name": "stderr", "text": NEW_SANDBOX_NOTICE})
            request = self._messages.msg(
                "execute_request",
                {
                    "code": code,
                    "silent": False,
                    "store_history": True,
                    "user_expressions": {},
                    "allow_stdin": True,
                    # One request at a time: nothing queued to abort, and /execute's hidden
                    # code right after a failed cell must not be aborted either.
                    "stop_on_error": False,
                },
            )
            msg_id = request["header"]["msg_id"]
            parts = self._parts(request)
            fix = "Move large data as a file (%e2b upload) and read it in the cell."
            refusal = too_large("shell", parts, "This cell", fix)
            if refusal is not None:
                raise refusal
            previous_env = await self._set_env(channels, env_vars) if env_vars else None
            cell = self._cells[msg_id] = _Cell(msg_id)
            session.hold_busy(True)
            try:
                channels.send("shell", parts)
                async for event in self._events(cell, channels, timeout, late_output):
                    if event[0] == "error":
                        span.fail(str(event[1].get("ename", "Error")))
                    yield event
            except BaseException:
                if not cell.ended and not cell.stopped:  # Ctrl-C, or the consumer failed
                    await self._stop(cell, channels, late_output)
                raise
            finally:
                session.hold_busy(False)
                self._cells.pop(msg_id, None)
                channels.withdraw(msg_id)  # still held (after an exit()): it must not run later
                if cell.asking and on_unanswered is not None:
                    on_unanswered()
                if cell.catching_up is not None:
                    cell.catching_up.cancel()
                if late_output is not None and not cell.restarted:  # (its process's last words)
                    self._late[msg_id] = late_output
                    while len(self._late) > _LATE_CELLS:
                        self._late.popitem(last=False)
                if previous_env is not None:
                    await self._restore_env(channels, previous_env)

    # ---- environment variables of one cell -----------------------------------------------

    async def _set_env(
        self, channels: KernelChannels, env_vars: dict[str, str]
    ) -> dict[str, str | None]:
        """Set ``env_vars`` in the remote kernel; their previous values (None: unset)."""
        reply = await self._hidden(channels, "", {"previous": cell_env.set_expression(env_vars)})
        result = (reply.get("user_expressions") or {}).get("previous") or {}
        if reply.get("status") != "ok" or result.get("status") != "ok":
            raise E2BKernelError(
                "The cell's environment variables could not be set in the sandbox's kernel "
                f"({result.get('ename', 'error')}: {result.get('evalue', '')})."
            )
        return cell_env.previous_values(result)

    async def _restore_env(self, channels: KernelChannels, previous: dict[str, str | None]) -> None:
        """Put the values from before the cell back (best effort: the cell already ended)."""
        try:
            await self._hidden(channels, cell_env.restore_code(previous), {})
        except Exception as exc:
            self.log.warning("could not restore the environment after the cell: %r", exc)

    async def _hidden(
        self, channels: KernelChannels, code: str, user_expressions: dict[str, str]
    ) -> dict[str, Any]:
        """Run a silent request (no output, no history, no execution count); its reply."""
        request = self._messages.msg("execute_request", silent_execute(code, user_expressions))
        msg_id = request["header"]["msg_id"]
        cell = self._cells[msg_id] = _Cell(msg_id)
        try:
            channels.send("shell", self._parts(request))
            deadline = asyncio.get_running_loop().time() + _HIDDEN_WAIT
            while True:
                remaining = deadline - asyncio.get_running_loop().time()
                try:
                    channel, msg_type, content = await cell.next(max(0.0, remaining))
                except asyncio.TimeoutError:
                    raise E2BKernelError(
                        f"The sandbox's kernel did not answer within {_HIDDEN_WAIT:.0f} s "
                        "(is a cell still running there?). Run the cell again."
                    ) from None
                if channel == _CLOSED:
                    raise await self._failure(content["reason"])
                if channel == _DIED:
                    raise KernelDied(content["state"])
                if channel == "shell" and msg_type == "execute_reply":
                    return content
        finally:
            self._cells.pop(msg_id, None)
            channels.withdraw(msg_id)

    async def _events(
        self,
        cell: _Cell,
        channels: KernelChannels,
        timeout: float | None,
        late_output: LateOutput | None,
    ) -> AsyncIterator[Event]:
        limit, raise_it = cell_limit(timeout, self.session.config.cell_timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit if limit else None
        reply: dict[str, Any] | None = None
        errored = False
        while not (cell.ended and reply is not None):
            if cell.ended:  # the reply travels on another socket: it may come after 'idle'
                remaining: float | None = _REPLY_AFTER_IDLE
            else:
                remaining = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                channel, msg_type, content = await cell.next(remaining)
            except asyncio.TimeoutError:
                if cell.ended:
                    break
                if channels.withdraw(cell.msg_id):  # held (after an exit()), never sent
                    raise ExecutionTimeout(cell_timeout_message(limit or 0, raise_it)) from None
                await self._stop(cell, channels, late_output)
                message = cell_timeout_message(limit or 0, raise_it)
                if not cell.ended and self._closed_reason is None:
                    # It caught the interrupt and runs on: every later cell would wait.
                    cell.restarted = await self._restart(channels)
                    if cell.restarted:
                        message = cell_timeout_restart_message(limit or 0, raise_it)
                    else:
                        message = cell_timeout_running_message(limit or 0)
                raise ExecutionTimeout(message) from None
            if channel == _CLOSED:
                raise await self._failure(content["reason"])
            if channel == _DIED:
                cell.stopped = True  # nothing to stop: its process is gone
                if reply is not None:
                    break  # it had ended (``exit()``), and its 'idle' went with its process
                raise KernelDied(content["state"])
            if channel == _CAUGHT_UP:
                if cell.started:
                    continue
                # Its reply came and IOPub caught up without its 'busy': a process the
                # server had just restarted ran it before the server listened to its IOPub.
                yield ("stream", {"name": "stderr", "text": LOST_OUTPUT_NOTE})
                break
            if channel == "shell" and msg_type == "execute_reply":
                reply = content
                if not cell.started:  # its IOPub may be behind it, or lost
                    self._catch_up(cell, channels)
            elif channel == "stdin" and msg_type == "input_request":
                cell.asking = True
                yield (msg_type, content)
            elif channel == "iopub" and msg_type in _OUTPUTS:
                errored = errored or msg_type == "error"
                yield (msg_type, _as_shown(msg_type, content))
        if reply is not None and reply.get("status") == "error" and not errored:
            # IPython shows an exception group as stderr text, with no 'error' message: the
            # reply alone says the cell failed (python3 fails the cell, nbval with it).
            yield ("error", {k: reply.get(k, "") for k in ("ename", "evalue")} | {"traceback": []})
        for payload in (reply or {}).get("payload") or []:
            if isinstance(payload, dict) and payload.get("source") in _SHOWN_PAYLOADS:
                yield ("payload", payload)  # help (obj?) for the pager, %load's next input

    async def _stop(
        self, cell: _Cell, channels: KernelChannels, late_output: LateOutput | None = None
    ) -> None:
        """Interrupt the cell once the remote kernel runs it, and wait (bounded) for its end.
        What it prints meanwhile (handling the interrupt) goes to ``late_output``."""
        cell.stopped = True
        if self._closed_reason is not None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _STOP_WAIT
        while not cell.started and not cell.ended:
            if not await self._drain(cell, deadline, late_output):
                return
        if not cell.ended:
            self.log.info("interrupting the remote kernel's cell")
            try:
                await asyncio.wait_for(channels.endpoint.interrupt(channels.kernel_id), _STOP_WAIT)
            except Exception as exc:
                self.log.warning("could not interrupt the remote kernel: %r", exc)
                return
        deadline = loop.time() + _STOP_WAIT
        while not cell.ended:
            if not await self._drain(cell, deadline, late_output):
                return

    async def _restart(self, channels: KernelChannels) -> bool:
        """Restart the remote kernel (a cell ignored its interrupt); whether that was done."""
        self.log.warning("a timed-out cell ignored its interrupt: restarting the remote kernel")
        try:
            await asyncio.wait_for(channels.endpoint.restart(channels.kernel_id), 30)
        except Exception as exc:
            self.log.warning("could not restart the remote kernel: %r", exc)
            return False
        return True

    @staticmethod
    def _catch_up(cell: _Cell, channels: KernelChannels) -> None:
        """Tell the cell when IOPub has caught up with its reply (see iopub_caught_up)."""

        async def catch_up() -> None:
            await channels.iopub_caught_up(CATCH_UP_FOR)
            cell.messages.put_nowait((_CAUGHT_UP, _CAUGHT_UP, {}))

        if cell.catching_up is None:
            cell.catching_up = asyncio.ensure_future(catch_up())

    async def _drain(self, cell: _Cell, deadline: float, late_output: LateOutput | None) -> bool:
        """Read one message of a cell being stopped: its outputs to ``late_output`` (the rest,
        its interrupt's error among them, is dropped); False to give up waiting."""
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return False
        try:
            channel, msg_type, content = await cell.next(remaining)
        except asyncio.TimeoutError:
            return False
        if late_output is not None and channel == "iopub" and msg_type in _LATE_OUTPUTS:
            self._show_late(late_output, msg_type, content)
        return channel not in (_CLOSED, _DIED, _CAUGHT_UP)

    async def _failure(self, reason: str) -> E2BKernelError:
        await self.close()
        return await closed_error(self.session, reason)
