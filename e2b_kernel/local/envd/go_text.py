"""Errno and signal texts worded as envd (a Go program) words them in its messages.

Go's tables are glibc's texts with a lower-case first letter, except where the text starts
with an acronym ("CPU time limit exceeded", "I/O possible").
"""

from __future__ import annotations

import os
import signal

__all__ = ["errno_text", "signal_text"]


def _go_case(text: str) -> str:
    if len(text) > 1 and text[1].islower():
        return text[0].lower() + text[1:]
    return text


def errno_text(code: int) -> str:
    """``errno.EACCES`` -> ``"permission denied"``."""
    return _go_case(os.strerror(code))


def signal_text(signum: int) -> str:
    """``signal.SIGKILL`` -> ``"killed"``, as in Go's ``"signal: killed"``."""
    text = signal.strsignal(signum) if signum in signal.valid_signals() else None
    return _go_case(text) if text else f"signal {signum}"
