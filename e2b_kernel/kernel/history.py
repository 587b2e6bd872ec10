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
    """Inputs of the cells run in this kernel process. Their outputs are not kept, as IPython
    keeps none by default (``HistoryManager.db_log_output``): ``output=True`` gives None."""

    def __init__(self) -> None:
        self._entries: list[tuple[int, str]] = []

    def add(self, line: int, code: str) -> None:
        """Record cell ``line``'s input."""
        self._entries.append((line, code))

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
        numbered = SESSION
        if hist_access_type == "tail":
            entries = entries[-(n if n is not None else 10) :] if n != 0 else []
        elif hist_access_type == "range":
            if session not in (None, 0, SESSION):
                return []
            low = start or 0
            entries = [e for e in entries if e[0] >= low and (stop is None or e[0] < stop)]
            numbered = 0  # IPython numbers the current session's range from memory as 0
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
        return [(numbered, line, (code, None) if output else code) for line, code in entries]
