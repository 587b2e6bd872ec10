"""envd's ``process.Process`` Connect-RPC service: commands run inside one sandbox.

Each process's output is read once and fanned out to every connected stream (Start and any
Connect), with bounded queues so a slow client slows the process instead of filling memory.
Like real envd, a process outlives a dropped stream; the deadline (``Connect-Timeout-Ms``) of
the Start request kills it, whether or not anyone still reads it (envd runs it under that
deadline's context), while a Connect stream's deadline only ends that stream. A process
ends when it exits, even if a child it left in the background (``cmd &``) still holds its
output: envd's Go ``Wait`` closes the output pipes then, and so do we (after taking what they
hold).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from e2b.envd.process import process_connect
from e2b.envd.process.process_pb import (
    CloseStdinResponse,
    ConnectResponse,
    ListResponse,
    ProcessConfig,
    ProcessEvent,
    ProcessInfo,
    SendInputResponse,
    SendSignalResponse,
    Signal,
    StartResponse,
    StreamInputResponse,
    UpdateResponse,
)
from protobuf import Oneof

from ..sandbox import SANDBOX_HOME, LocalSandbox
from ..sandbox.agent_client import AgentCallError
from ..sandbox.process import AgentProcess
from ..sandbox.sandbox_output import UNREAD_OUTPUT_RATE, ReadRate
from .go_text import signal_text
from .pty import Terminal
from .user_paths import HOMES, UnresolvablePath, resolve_user_path, unknown_user

_READ_CHUNK = 64 * 1024
_QUEUE_SIZE = 64
_DEFAULT_KEEPALIVE = 90.0
_NO_EVENT = object()
# envd's words for input sent down the wrong pipe.
_TTY_UNAVAILABLE = "tty not assigned to process — input should be written to the stdin, not the tty"
_STDIN_ON_PTY = "tty assigned to process — input should be written to the pty, not the stdin"
_CLOSE_STDIN_ON_PTY = "cannot close stdin for PTY process — send Ctrl+D (0x04) instead"

# Set per request by the RPC router: fires when the HTTP client disconnects.
CLIENT_GONE: contextvars.ContextVar[asyncio.Event] = contextvars.ContextVar("client_gone")


@dataclass
class Managed:
    """A process started through Start, with its output subscribers."""

    pid: int  # as seen inside the sandbox
    proc: AgentProcess
    config: ProcessConfig
    tag: str | None
    subscribers: list[asyncio.Queue] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    end: ProcessEvent.EndEvent | None = None
    terminal: Terminal | None = None

    async def kill(self, signum: int = signal.SIGKILL) -> None:
        """Signal the process alone, as envd does (its ``SendSignal``, and the deadline's
        ``exec.CommandContext``): what it started goes on running, as in E2B's VM (``kill``
        of ``sleep 300; echo done`` ends the shell, not the sleep)."""
        await self.proc.signal(signum, group=False)


def _event(name: str, value: Any) -> ProcessEvent:
    return ProcessEvent(event=Oneof(name, value))  # type: ignore[arg-type]  # name is a Literal


class ProcessService(process_connect.Process):
    """process.Process for one sandbox."""

    def __init__(self, sandbox: LocalSandbox) -> None:
        self.sandbox = sandbox
        self.processes: dict[int, Managed] = {}
        self._pumps: set[asyncio.Task] = set()

    async def start(self, request: Any, ctx: Any) -> AsyncIterator[Any]:
        """Start a process; stream start, output and end events."""
        config = request.process
        if config is None or not config.cmd:
            raise ConnectError(Code.INVALID_ARGUMENT, "process.cmd is required")
        user = request_user(ctx)
        try:  # as envd: ~ and relative paths from the user's home
            cwd = resolve_user_path(config.cwd, user) if config.cwd else SANDBOX_HOME
        except UnresolvablePath as exc:
            raise ConnectError(Code.INVALID_ARGUMENT, str(exc)) from None
        if not self.sandbox.isolated:
            self._check_cwd(cwd)  # inside a sandbox the agent checks it, in the sandbox's view
        env = {**self.sandbox.base_env(user), **dict(config.envs)}
        argv = [config.cmd, *config.args]
        terminal = None
        stdin: int = (
            asyncio.subprocess.PIPE if request.stdin is not False else asyncio.subprocess.DEVNULL
        )
        stdout = stderr = asyncio.subprocess.PIPE
        if request.pty is not None:
            size = request.pty.size
            terminal = Terminal(size.cols if size else 80, size.rows if size else 24)
            stdin = stdout = stderr = terminal.slave
        try:
            proc = await self.sandbox.spawn(
                argv,
                env=env,
                cwd=cwd,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                user=user,
                pty=terminal is not None,  # the terminal becomes its controlling tty
            )
        except AgentCallError as exc:
            if terminal is not None:
                terminal.close()
            if exc.strerror and exc.strerror.startswith("cwd "):
                raise ConnectError(Code.INVALID_ARGUMENT, exc.strerror) from None
            raise ConnectError(Code.INTERNAL, exc.strerror or str(exc)) from None
        except OSError as exc:
            if terminal is not None:
                terminal.close()
            raise ConnectError(Code.INTERNAL, f"cannot start {config.cmd!r}: {exc}") from None
        pid = self.sandbox.sandbox_pid(proc)
        # envd keeps the tag only when one was sent (``commands.run`` sends none): unset, the
        # SDK reads it as None, not "".
        tag = request.tag if request.has_field("tag") else None
        managed = Managed(pid, proc, config, tag, terminal=terminal)
        if terminal is not None:
            terminal.close_slave()
        queue: asyncio.Queue = asyncio.Queue(_QUEUE_SIZE)
        managed.subscribers.append(queue)
        self.processes[pid] = managed
        tasks = [self._pump(managed)]
        if ctx.timeout_ms:
            tasks.append(_kill_at_deadline(managed, ctx.timeout_ms / 1000))
        for coroutine in tasks:
            task = asyncio.create_task(coroutine)
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)
        async for message in self._stream(managed, queue, ctx, StartResponse):
            yield message

    async def connect(self, request: Any, ctx: Any) -> AsyncIterator[Any]:
        """Attach to a running process's output."""
        managed = self._find(request.process)
        queue: asyncio.Queue = asyncio.Queue(_QUEUE_SIZE)
        managed.subscribers.append(queue)
        async for message in self._stream(managed, queue, ctx, ConnectResponse):
            yield message

    async def _stream(self, managed: Managed, queue: asyncio.Queue, ctx: Any, kind: Any):
        """Yield start, then events from queue, keepalives, and enforce the deadline."""
        loop = asyncio.get_running_loop()
        timeout_ms = ctx.timeout_ms
        deadline = loop.time() + timeout_ms / 1000 if timeout_ms else None
        keepalive = _keepalive_interval(ctx)
        gone = CLIENT_GONE.get(None) or asyncio.Event()
        try:
            yield kind(event=_event("start", ProcessEvent.StartEvent(pid=managed.pid)))
            while True:
                wait = keepalive
                if deadline is not None:
                    wait = min(wait, deadline - loop.time())
                if wait <= 0:  # (Start's deadline also kills: _kill_at_deadline)
                    raise ConnectError(Code.DEADLINE_EXCEEDED, "context deadline exceeded")
                event = await _next_event(queue, gone, wait)
                if gone.is_set():
                    return  # like envd: the process keeps running without this client
                if event is _NO_EVENT:
                    if deadline is None or loop.time() < deadline:
                        yield kind(event=_event("keepalive", ProcessEvent.KeepAlive()))
                    continue
                if event is None:
                    return
                yield kind(event=event)
        finally:
            with contextlib.suppress(ValueError):
                managed.subscribers.remove(queue)

    async def _pump(self, managed: Managed) -> None:
        """Read the process's output once and fan it out; then publish the end event."""
        proc = managed.proc

        unread = ReadRate(UNREAD_OUTPUT_RATE)  # while no one streams it (sandbox_output)

        async def publish(name: str, chunk: bytes) -> None:
            if not managed.subscribers and proc.returncode is None:  # exited: take the rest
                await unread.took(len(chunk))
            data = ProcessEvent.DataEvent(output=Oneof(name, chunk))  # type: ignore[arg-type]
            await self._publish(managed, _event("data", data))

        async def read(stream: asyncio.StreamReader | None, name: str) -> None:
            if stream is None:
                return
            while chunk := await stream.read(_READ_CHUNK):
                await publish(name, chunk)

        async def read_terminal(terminal: Terminal) -> None:
            while chunk := await terminal.read():
                await publish("pty", chunk)

        async def read_all() -> None:
            if managed.terminal is not None:
                await read_terminal(managed.terminal)
            await asyncio.gather(read(proc.stdout, "stdout"), read(proc.stderr, "stderr"))

        reading = asyncio.ensure_future(read_all())
        exited = asyncio.ensure_future(proc.wait())
        try:
            await asyncio.wait({reading, exited}, return_when=asyncio.FIRST_COMPLETED)
            if not reading.done():
                # It exited; a child it left may hold its output open for ever: take what is
                # there, then end (as envd, whose Wait closes the pipes at the exit).
                proc.release_output()
                if managed.terminal is not None:
                    managed.terminal.release()
            await reading
        finally:
            for task in (reading, exited):
                task.cancel()
            code = await proc.wait()
            if managed.terminal is not None:
                managed.terminal.close()
            managed.end = _end_event(code)
            self.processes.pop(managed.pid, None)
            managed.done.set()
            await self._publish(managed, _event("end", managed.end))
            for queue in list(managed.subscribers):
                await queue.put(None)

    async def _publish(self, managed: Managed, event: ProcessEvent) -> None:
        for queue in list(managed.subscribers):
            await queue.put(event)

    async def update(self, request: Any, ctx: Any) -> Any:
        """Resize a process's PTY."""
        managed = self._find(request.process)
        if managed.terminal is None:
            raise ConnectError(Code.INTERNAL, "error resizing tty: tty not assigned to process")
        if request.pty is not None and request.pty.size is not None:
            managed.terminal.resize(request.pty.size.cols, request.pty.size.rows)
        return UpdateResponse()

    async def list(self, request: Any, ctx: Any) -> Any:
        """Running processes."""
        infos = [
            ProcessInfo(config=m.config, pid=m.pid, tag=m.tag)
            for m in self.processes.values()
            if not m.done.is_set()
        ]
        return ListResponse(processes=infos)

    async def send_signal(self, request: Any, ctx: Any) -> Any:
        """SIGKILL or SIGTERM a process (the process alone, as envd)."""
        managed = self._find(request.process)
        signum = {Signal.SIGKILL: signal.SIGKILL, Signal.SIGTERM: signal.SIGTERM}.get(
            request.signal
        )
        if signum is None:  # envd's code and words
            raise ConnectError(Code.UNIMPLEMENTED, f"invalid signal: {request.signal!r}")
        await managed.kill(signum)
        return SendSignalResponse()

    async def send_input(self, request: Any, ctx: Any) -> Any:
        """Write to a process's stdin."""
        managed = self._find(request.process)
        await self._write_input(managed, request.input)
        return SendInputResponse()

    async def stream_input(self, request: Any, ctx: Any) -> Any:
        """A client stream: start (select the process), then data messages to its stdin."""
        managed: Managed | None = None
        async for message in request:
            event = message.event
            if event is None:
                continue
            if event.field == "start":
                managed = self._find(event.value.process)
            elif event.field == "data":
                if managed is None:
                    raise ConnectError(Code.FAILED_PRECONDITION, "send a start message first")
                await self._write_input(managed, event.value.input)
        return StreamInputResponse()

    async def close_stdin(self, request: Any, ctx: Any) -> Any:
        """Close a process's stdin (EOF); as envd, a stdin already closed or never opened is
        no error, while a PTY's input is ended with Ctrl+D instead."""
        managed = self._find(request.process)
        if managed.terminal is not None:
            raise ConnectError(
                Code.FAILED_PRECONDITION,
                f"error closing stdin: {_CLOSE_STDIN_ON_PTY}",
            )
        stdin = managed.proc.stdin
        if stdin is not None:
            stdin.close()
        return CloseStdinResponse()

    async def _write_input(self, managed: Managed, data: Any) -> None:
        if data is None or data.input is None:
            return
        if data.input.field == "pty":
            if managed.terminal is None:
                raise _input_refused("tty", _TTY_UNAVAILABLE)
            await managed.terminal.write(data.input.value)
            return
        if managed.terminal is not None:
            raise _input_refused("stdin", _STDIN_ON_PTY)
        stdin = managed.proc.stdin
        if stdin is None or stdin.is_closing():
            raise _input_refused("stdin", "stdin not enabled or closed")
        try:
            stdin.write(data.input.value)
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            raise _input_refused("stdin", "the process closed its stdin") from None

    def _find(self, selector: Any) -> Managed:
        choice = selector.selector if selector is not None else None
        if choice is not None and choice.field == "pid":
            managed = self.processes.get(choice.value)
            if managed is not None and not managed.done.is_set():
                return managed
            raise ConnectError(Code.NOT_FOUND, f"process with pid {choice.value} not found")
        if choice is not None and choice.field == "tag":
            for managed in self.processes.values():
                if managed.tag == choice.value and not managed.done.is_set():
                    return managed
            raise ConnectError(Code.NOT_FOUND, f"process with tag {choice.value!r} not found")
        raise ConnectError(Code.INVALID_ARGUMENT, "select a process by pid or tag")

    def _check_cwd(self, cwd: str) -> None:
        try:
            resolved = self.sandbox.paths.to_host(cwd)
        except (OSError, ValueError) as exc:
            raise ConnectError(Code.INVALID_ARGUMENT, f"invalid cwd {cwd!r}: {exc}") from None
        if not resolved.host.is_dir():
            raise ConnectError(Code.INVALID_ARGUMENT, f"cwd '{cwd}' does not exist")


async def _kill_at_deadline(managed: Managed, seconds: float) -> None:
    """Start's deadline: kill the process then unless it has ended (with or without a client
    streaming it: a background command the caller disconnected from dies at its timeout too,
    as on E2B)."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(managed.done.wait(), seconds)
        return
    await managed.kill()


async def _next_event(queue: asyncio.Queue, gone: asyncio.Event, timeout: float) -> Any:
    """The next queued event, or _NO_EVENT after timeout or once the client is gone."""
    getter = asyncio.ensure_future(queue.get())
    watcher = asyncio.ensure_future(gone.wait())
    try:
        await asyncio.wait({getter, watcher}, timeout=timeout, return_when="FIRST_COMPLETED")
    finally:
        watcher.cancel()
        getter.cancel()
    if getter.done() and not getter.cancelled():
        return getter.result()
    return _NO_EVENT


def _input_refused(pipe: str, reason: str) -> ConnectError:
    """envd's refusal of input the process cannot take now (a state, not a fault)."""
    return ConnectError(Code.FAILED_PRECONDITION, f"error writing to {pipe}: {reason}")


def _end_event(code: int) -> ProcessEvent.EndEvent:
    """envd's end event: Go's wording of the wait status, which is also the ``error`` of any
    end but a clean exit (the SDK's ``CommandResult.error``)."""
    if code < 0:
        status = f"signal: {signal_text(-code)}"
        return ProcessEvent.EndEvent(exit_code=-1, exited=False, status=status, error=status)
    status = f"exit status {code}"
    if code == 0:
        return ProcessEvent.EndEvent(exit_code=0, exited=True, status=status)
    return ProcessEvent.EndEvent(exit_code=code, exited=True, status=status, error=status)


def request_user(ctx: Any) -> str:
    """The user a request runs as: envd reads it from ``Authorization: Basic base64(user:)``
    (the SDK's ``user=``); "user" when absent."""
    raw = ctx.request_headers.get("authorization") or ""
    scheme, _, value = raw.partition(" ")
    if scheme.lower() != "basic" or not value:
        return "user"
    try:
        name = base64.b64decode(value.strip(), validate=True).decode().partition(":")[0]
    except (ValueError, UnicodeDecodeError):
        raise ConnectError(Code.INVALID_ARGUMENT, "invalid Authorization header") from None
    if name not in HOMES:
        raise ConnectError(Code.UNAUTHENTICATED, unknown_user(name))
    return name


def _keepalive_interval(ctx: Any) -> float:
    raw = ctx.request_headers.get("keepalive-ping-interval")
    try:
        return max(1.0, float(raw)) if raw else _DEFAULT_KEEPALIVE
    except ValueError:
        return _DEFAULT_KEEPALIVE
