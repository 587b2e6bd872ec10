"""Pseudo-terminals for envd's PTY sessions (``sandbox.pty``): open, read, write, resize."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import pty
import struct
import termios

_READ_CHUNK = 64 * 1024
_RELEASE_LIMIT = 1 << 20  # what read() still returns after release() (a child may keep writing)


class Terminal:
    """The host side (master) of one PTY; the sandbox process gets the other end."""

    def __init__(self, cols: int, rows: int) -> None:
        self.master, self.slave = pty.openpty()
        os.set_blocking(self.master, False)
        self._released = False
        self._after_release = 0  # bytes read since release()
        self._waiting: asyncio.Future | None = None
        self.resize(cols, rows)

    def resize(self, cols: int, rows: int) -> None:
        """Set the window size (the process gets SIGWINCH)."""
        size = struct.pack("HHHH", max(rows, 1), max(cols, 1), 0, 0)
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)

    def close_slave(self) -> None:
        """Drop our copy of the process's end once the process has it."""
        if self.slave >= 0:
            os.close(self.slave)
            self.slave = -1

    def release(self) -> None:
        """The process exited: read() returns what the terminal holds now, then b"", though
        a child it left may still hold its end (envd closes the terminal at the exit)."""
        self._released = True
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_result(None)

    async def read(self) -> bytes:
        """The next output; b"" once the process side is closed (EIO on Linux)."""
        loop = asyncio.get_running_loop()
        while True:
            if self._released and self._after_release >= _RELEASE_LIMIT:
                return b""
            try:
                chunk = os.read(self.master, _READ_CHUNK)
                if self._released:
                    self._after_release += len(chunk)
                return chunk
            except BlockingIOError:
                if self._released:
                    return b""
                ready = self._waiting = loop.create_future()
                loop.add_reader(self.master, _wake, ready)
                try:
                    await ready
                finally:
                    loop.remove_reader(self.master)
                    self._waiting = None
            except OSError as exc:
                if exc.errno == errno.EIO:
                    return b""
                raise

    async def write(self, data: bytes) -> None:
        """Type data into the terminal."""
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.master, view)
            except BlockingIOError:
                await asyncio.sleep(0.01)  # the terminal's input buffer is full; retry shortly
                continue
            view = view[written:]

    def close(self) -> None:
        """Close both ends."""
        self.close_slave()
        with contextlib.suppress(OSError):
            os.close(self.master)


def _wake(ready: asyncio.Future) -> None:
    if not ready.done():  # release() may have woken it first
        ready.set_result(None)
