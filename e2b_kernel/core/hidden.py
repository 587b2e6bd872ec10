"""Hidden code: snippets the session runs in the user's Python context on our behalf.

Completion, inspection, ``user_expressions`` and ``%%e2b -i/-o`` all need an answer from the
sandbox's live namespace, and E2B's ``/execute`` protocol offers only "run this code". So each
runs a self-contained snippet and reads back one marked JSON line from its stdout. One
convention serves them all:

- :func:`wrap` turns a snippet into a single expression statement that returns ``None`` and
  runs in a private namespace, so it displays nothing, leaves ``_`` alone and leaks no names;
  the snippet sees its arguments as ``ARGS`` and prints ``MARKER + json.dumps(reply)``.
- :func:`parse_reply` finds that line again.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MARKER", "parse_reply", "wrap"]

MARKER = "\x00e2b-kernel-hidden\x00"


def wrap(source: str, *args: Any) -> str:
    """Hidden code that runs ``source`` with ``ARGS = args`` in a namespace of its own."""
    namespace = {"__name__": "__e2b_kernel_hidden__", "ARGS": args, "MARKER": MARKER}
    return f"__import__('builtins').exec({source!r}, {namespace!r})"


def parse_reply(stdout: str) -> dict[str, Any] | None:
    """Return the JSON object the hidden code printed after ``MARKER``, or None."""
    index = stdout.rfind(MARKER)
    if index < 0:
        return None
    line = stdout[index + len(MARKER) :].split("\n", 1)[0]
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
