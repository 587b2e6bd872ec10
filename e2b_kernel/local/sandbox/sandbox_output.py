"""Output that code in a sandbox can write and the service reads: at a bounded rate, and shown
in the service's log only as quoted text.

Code in a sandbox can reach the service's end of more pipes than the ones it was given: root
in a sandbox can take bubblewrap's stderr (its pid 1 holds no capability, so the same uid may
``pidfd_getfd`` it), the sandbox's user the Jupyter Server's, and anyone a command's whose
caller has gone. Each byte read costs the service, shared by every sandbox and charged to
none of their cgroups: one flood kept it at 0.4-0.6 CPU-seconds a second. So where no one
needs the output whole, the service reads it at a bounded rate, and the writer waits for its
pipe as it would for a slow reader. What it logs of such output (a start failure's message)
cannot forge a log line or send terminal escapes.
"""

from __future__ import annotations

import asyncio
import re

__all__ = ["DIAGNOSTICS_RATE", "UNREAD_OUTPUT_RATE", "ReadRate", "quoted"]

# Bytes a second read of a log whose tail is all the service keeps (bubblewrap's and the
# agent's stderr, the Jupyter Server's): far above what they write, a trickle for a flood.
DIAGNOSTICS_RATE = 64 << 10
# Bytes a second read of a command's output while no client streams it (E2B's envd reads and
# drops it; so do we, but at this pace: the command waits for its pipe beyond it).
UNREAD_OUTPUT_RATE = 1 << 20

_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class ReadRate:
    """Reading at most ``per_second`` bytes a second, on average over one-second windows."""

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self._window_start: float | None = None
        self._taken = 0

    async def took(self, size: int) -> None:
        """Count ``size`` bytes read; return once the next read is within the rate."""
        now = asyncio.get_running_loop().time()
        if self._window_start is None or now - self._window_start >= 1.0:
            self._window_start, self._taken = now, 0
        self._taken += size
        if self._taken >= self.per_second:
            # The window's share is used: the rest of it is the writer's wait, not the loop's.
            await asyncio.sleep(self._window_start + 1.0 - now)
            self._window_start, self._taken = None, 0


def quoted(text: str) -> str:
    """``text`` (written in a sandbox) fit for one log record: control characters escaped,
    every line after the first indented, so that none reads as a record of the service's."""
    escaped = _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return "\n    | ".join(escaped.splitlines())
