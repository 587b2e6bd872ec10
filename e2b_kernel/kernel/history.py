"""The kernel's own input history, answered locally (E2B's protocol has no history endpoint).

Lines are numbered by the kernel's execution count, in one session per kernel process, with
the semantics of IPython's history: ``tail``, ``range`` and ``search`` (glob patterns).
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

__all__ = ["SESSION", "CellHistory"]

SESSION = 1  # the only session this process knows; 0 also means "the current session"


class CellHistory:
    """Inputs (and the text of their results) of the cells run in this kernel process."""

    def __init__(self) -> None:
        self._entries: list[tuple[int, str, str | None]] = []

    def add(self, line: int, code: str, output: str | None) -> None:
        """Record cell ``line`` with its input and the text/plain of its result, if any."""
        self._entries.append((line, code, output))

    def query(
        self,
        hist_access_type: str,
        output: bool = False,
        session: int | None = None,
        start: int | None = None,
        stop: int | None = None,
        n: int | None = None,
        pattern: str | None = None,
        unique: bool = False,
        **_ignored: Any,
    ) -> list[tuple[int, int, Any]]:
        """Return ``history_reply`` entries: (session, line, input or (input, output))."""
        entries = list(self._entries)
        if hist_access_type == "tail":
            entries = entries[-(n if n is not None else 10) :] if n != 0 else []
        elif hist_access_type == "range":
            if session not in (None, 0, SESSION):
                return []
            low = start or 0
            entries = [e for e in entries if e[0] >= low and (stop is None or e[0] < stop)]
        elif hist_access_type == "search":
            glob = pattern or "*"
            entries = [e for e in entries if fnmatchcase(e[1], glob)]
            if unique:
                seen: set[str] = set()
                kept = []
                for entry in reversed(entries):
                    if entry[1] not in seen:
                        seen.add(entry[1])
                        kept.append(entry)
                entries = kept[::-1]
            if n:
                entries = entries[-n:]
        else:
            return []
        return [
            (SESSION, line, (code, result) if output else code) for line, code, result in entries
        ]
