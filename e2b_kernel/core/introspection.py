"""Hidden code that answers completion and inspection from the sandbox's live namespace.

E2B's ``/execute`` protocol has no completion or inspection endpoint, so the session runs a
small snippet in the same IPython context (see :mod:`.hidden`). It uses IPython's own
completer and inspector, exactly as ipykernel does.
"""

from __future__ import annotations

from typing import Any

from .hidden import wrap

__all__ = [
    "complete_code",
    "empty_complete_reply",
    "empty_inspect_reply",
    "inspect_code",
    "user_expressions_code",
]

_COMPLETE = """
import json
from IPython import get_ipython
from IPython.core.completer import provisionalcompleter, rectify_completions
code, cursor_pos = ARGS
ip = get_ipython()
with provisionalcompleter():
    completions = list(rectify_completions(code, ip.Completer.completions(code, cursor_pos)))
types = [
    {"start": c.start, "end": c.end, "text": c.text, "type": c.type, "signature": c.signature}
    for c in completions
]
if completions:
    start, end = completions[0].start, completions[0].end
else:
    start = end = cursor_pos
reply = {
    "status": "ok",
    "matches": [c.text for c in completions],
    "cursor_start": start,
    "cursor_end": end,
    "metadata": {"_jupyter_types_experimental": types},
}
print(MARKER + json.dumps(reply))
"""

_INSPECT = """
import json
from IPython import get_ipython
from IPython.utils.tokenutil import token_at_cursor
code, cursor_pos, detail_level = ARGS
ip = get_ipython()
name = token_at_cursor(code, cursor_pos)
try:
    data = ip.object_inspect_mime(name, detail_level=detail_level)
    if not ip.enable_html_pager:
        data.pop("text/html", None)
    found = True
except KeyError:
    data, found = {}, False
print(MARKER + json.dumps({"status": "ok", "data": data, "metadata": {}, "found": found}))
"""


_USER_EXPRESSIONS = """
import json
from IPython import get_ipython
(expressions,) = ARGS
print(MARKER + json.dumps(get_ipython().user_expressions(expressions), default=str))
"""


def complete_code(code: str, cursor_pos: int) -> str:
    """Return hidden code that prints the ``complete_reply`` for ``code`` at ``cursor_pos``."""
    return wrap(_COMPLETE, code, cursor_pos)


def inspect_code(code: str, cursor_pos: int, detail_level: int) -> str:
    """Return hidden code that prints the ``inspect_reply`` for ``code`` at ``cursor_pos``."""
    return wrap(_INSPECT, code, cursor_pos, int(detail_level))


def user_expressions_code(expressions: dict[str, str]) -> str:
    """Return hidden code that prints IPython's ``user_expressions`` results as JSON."""
    return wrap(_USER_EXPRESSIONS, dict(expressions))


def empty_complete_reply(cursor_pos: int) -> dict[str, Any]:
    """A valid ``complete_reply`` with no matches."""
    return {
        "status": "ok",
        "matches": [],
        "cursor_start": cursor_pos,
        "cursor_end": cursor_pos,
        "metadata": {},
    }


def empty_inspect_reply() -> dict[str, Any]:
    """A valid ``inspect_reply`` that found nothing."""
    return {"status": "ok", "data": {}, "metadata": {}, "found": False}
