"""A sandbox process as the service sees it: pipe streams, its pid inside, its exit.

The agent starts the process with fds the service made (pipes, or a pty slave), so output is
read from ordinary pipe ends here, and the exit arrives as the last line of the spawn call.
The object offers the parts of ``asyncio.subprocess.Process`` that callers use.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

from .agent_client import AgentClient, AgentStream

PIPE = asyncio.subprocess.PIPE
DEVNULL = asyncio.subprocess.DEVNULL
# What release_output() still takes from a pipe that a left-behind child keeps writing into.
RELEASE_LIMIT = 1 << 20


class AgentProcess:
    """A process the agent started; ``pid`` is its pid inside the sandbox."""

    def __init__(self, client: AgentClient) -> None:
        self._client = client
        self.pid = -1
        self.returncode: int | None = None
        self.stdin: asyncio.StreamWriter | None = None
        self.stdout: asyncio.StreamReader | None = None
        self.stderr: asyncio.StreamReader | None = None
        self._exited = asyncio.Event()
        self._output_pipes: list[tuple[asyncio.StreamReader, asyncio.ReadTransport]] = []
        self._watch: asyncio.Task[None] | None = None
        self._signals: set[asyncio.Task[None]] = set()

    async def start(
        self,
        request: dict,
        stdin: int | None,
        stdout: int | None,
        stderr: int | None,
    ) -> None:
        """Make the pipes, ask the agent to spawn, and wire our ends to asyncio streams."""
        ours: list[tuple[str, int]] = []
        theirs: list[int] = []
        opened: list[int] = []  # fds we created and must close after the call
        try:
            for name, spec in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr)):
                if spec == PIPE:
                    read_end, write_end = os.pipe2(os.O_CLOEXEC)
                    mine, child = (
                        (write_end, read_end) if name == "stdin" else (read_end, write_end)
                    )
                    ours.append((name, mine))
                    theirs.append(child)
                    opened.append(child)
                elif spec is None or spec == DEVNULL:
                    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                    theirs.append(null)
                    opened.append(null)
                else:
                    theirs.append(spec)  # the caller's fd (a pty slave); the caller closes it
            stream = await self._client.call("spawn", theirs, **request)
        except BaseException:
            for _, fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in opened:
                os.close(fd)
        self.pid = int(stream.reply["pid"])
        loop = asyncio.get_running_loop()
        for name, fd in ours:
            if name == "stdin":
                self.stdin = await _writer(loop, fd)
            else:
                reader, transport = await _reader(loop, fd)
                setattr(self, name, reader)
                self._output_pipes.append((reader, transport))
        self._watch = asyncio.ensure_future(self._wait_exit(stream))

    async def _wait_exit(self, stream: AgentStream) -> None:
        code = -signal.SIGKILL  # the agent died with the process: the sandbox killed it
        try:
            while (line := await stream.read_json()) is not None:
                if "exit" in line:
                    code = int(line["exit"])
                    break
        except (OSError, ValueError):
            pass
        finally:
            await stream.close()
            self.returncode = code
            self._exited.set()

    async def wait(self) -> int:
        """Wait for the exit; the code is negative for a signal."""
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    async def signal(self, signum: int, *, group: bool = True) -> None:
        """Signal the process (and by default its process group: it leads its session)."""
        if self.returncode is not None:
            return
        with contextlib.suppress(OSError):  # already gone, or the agent is
            await self._client.request("signal", pid=self.pid, signal=signum, group=group)

    def release_output(self) -> None:
        """End the stdout and stderr streams now: what the pipes hold is read (up to
        RELEASE_LIMIT each), then they close. For a process that exited while a child it
        left still holds their write ends (``cmd &``), which then gets EPIPE, as on envd."""
        for reader, transport in self._output_pipes:
            if transport.is_closing():
                continue
            taken = 0
            with contextlib.suppress(OSError):  # EAGAIN: all there is has been read
                fd = transport.get_extra_info("pipe").fileno()
                while taken < RELEASE_LIMIT and (chunk := os.read(fd, 65536)):
                    reader.feed_data(chunk)
                    taken += len(chunk)
            transport.close()  # the stream's EOF comes after what it holds

    def kill(self) -> None:
        """SIGKILL the process group, without waiting (as asyncio's Process.kill)."""
        if self.returncode is None:
            task = asyncio.ensure_future(self.signal(signal.SIGKILL))
            self._signals.add(task)
            task.add_done_callback(self._signals.discard)


async def _reader(
    loop: asyncio.AbstractEventLoop, fd: int
) -> tuple[asyncio.StreamReader, asyncio.ReadTransport]:
    reader = asyncio.StreamReader(limit=2**16, loop=loop)
    pipe = os.fdopen(fd, "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe
    )
    return reader, transport


async def _writer(loop: asyncio.AbstractEventLoop, fd: int) -> asyncio.StreamWriter:
    pipe = os.fdopen(fd, "wb", buffering=0)
    protocol = asyncio.StreamReaderProtocol(asyncio.StreamReader(loop=loop), loop=loop)
    transport, _ = await loop.connect_write_pipe(lambda: protocol, pipe)
    return asyncio.StreamWriter(transport, protocol, None, loop)
