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


class Terminal:
    """The host side (master) of one PTY; the sandbox process gets the other end."""

    def __init__(self, cols: int, rows: int) -> None:
        self.master, self.slave = pty.openpty()
        os.set_blocking(self.master, False)
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

    async def read(self) -> bytes:
        """The next output; b"" once the process side is closed (EIO on Linux)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                return os.read(self.master, _READ_CHUNK)
            except BlockingIOError:
                ready = loop.create_future()
                loop.add_reader(self.master, ready.set_result, None)
                try:
                    await ready
                finally:
                    loop.remove_reader(self.master)
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
