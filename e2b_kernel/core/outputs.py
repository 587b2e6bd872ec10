"""Pure functions that turn E2B ``Result`` / ``ExecutionError`` objects into Jupyter content.

E2B's ``/execute`` protocol flattens a Jupyter MIME bundle into named fields (spec section 3.3)
and joins traceback lines into one string (section 3.6). These functions undo both as well as
the protocol allows:

- every named field goes back to its MIME type, and ``extra`` (all other MIME types) is merged
  in unchanged. E2B's derived ``data`` (``e2b/data``) and ``chart`` (``e2b/chart``) fields are
  left out: they are not what the code displayed, and nbformat only accepts JSON values for
  ``*json`` MIME types, so a notebook holding them could not be saved.
- a traceback string is split back into a list of lines, ANSI colour codes kept.
"""

from __future__ import annotations

import re
from typing import Any

from . import text_plain

__all__ = [
    "DERIVED_JSON_METADATA",
    "E2B_DERIVED_MIME_TYPES",
    "FIELD_MIME_TYPES",
    "error_to_content",
    "result_to_bundle",
    "split_traceback",
    "strip_ansi",
    "without_e2b_fields",
]

# E2B Result field -> Jupyter MIME type, in E2B's own order (Result.formats()).
FIELD_MIME_TYPES: dict[str, str] = {
    "text": "text/plain",
    "html": "text/html",
    "markdown": "text/markdown",
    "svg": "image/svg+xml",
    "png": "image/png",
    "jpeg": "image/jpeg",
    "pdf": "application/pdf",
    "latex": "text/latex",
    "json": "application/json",
    "javascript": "application/javascript",
}

# What E2B's kernel startup adds to tables and plots on top of what the code displayed.
E2B_DERIVED_MIME_TYPES = ("e2b/data", "e2b/chart")
# E2B's startup also gives every list and dict result an application/json copy, marked with
# exactly this metadata (IPython's own JSON display always adds a "root").
DERIVED_JSON_METADATA = {"expanded": True}


def without_e2b_fields(content: dict[str, Any]) -> dict[str, Any]:
    """Rich output content (Jupyter's) without what E2B's kernel startup derived: its own MIME
    types, and the application/json copy of a list or dict (``python3`` shows their text)."""
    derived: tuple[str, ...] = E2B_DERIVED_MIME_TYPES
    metadata = content.get("metadata")
    if isinstance(metadata, dict) and metadata.get("application/json") == DERIVED_JSON_METADATA:
        derived += ("application/json",)
    cleaned = dict(content)
    for key in ("data", "metadata"):
        part = content.get(key)
        if isinstance(part, dict) and any(m in part for m in derived):
            cleaned[key] = {m: v for m, v in part.items() if m not in derived}
    return cleaned


def result_to_bundle(result: Any) -> dict[str, Any]:
    """Return the Jupyter MIME bundle (``data``) of an E2B ``Result``.

    Images stay base64 text as Jupyter expects; JSON stays a dict.
    """
    bundle: dict[str, Any] = {}
    for field, mime in FIELD_MIME_TYPES.items():
        value = getattr(result, field, None)
        if value is not None and value != "":
            bundle[mime] = value
    extra = getattr(result, "extra", None) or {}
    for mime, value in extra.items():
        bundle.setdefault(str(mime), value)
    return text_plain.restore(bundle)


def result_to_event(result: Any) -> tuple[str, dict[str, Any]]:
    """Return ``("execute_result" | "display_data", content)`` for an E2B ``Result``."""
    kind = "execute_result" if getattr(result, "is_main_result", False) else "display_data"
    return kind, {"data": result_to_bundle(result), "metadata": {}}


_ANSI = r"(?:\x1b\[[0-9;]*m)*"
# IPython starts a traceback with a rule of dashes, then "<Name>   Traceback (most recent...)".
_RESET = r"(?:\x1b\[(?:0|39)?m)?"  # only a reset may close the rule or header
_RULE = re.compile(rf"^({_ANSI}-{{20,}}{_RESET})(?=[^\n])", re.MULTILINE)
_HEADER_END = re.compile(r"(Traceback \(most recent call last\)" + _RESET + r")(?=[^\n])")
# A frame's first line ("Cell In[3], line 2" or "File /x.py:4, in f()"); its other lines are
# source lines, which start with a space or an arrow ("----> 2").
_FRAME_START = re.compile(r"^(?:Cell In\[|File |Input In \[)")
# How IPython shows an exception without its frames (SystemExit): entries that each end in a
# newline, as python3 sends them (the blank lines a front end's joining newlines then make).
_EXCEPTION_ONLY = "An exception has occurred, use %tb to see the full traceback."
_CHAINS = (
    "The above exception was the direct cause of the following exception:",
    "During handling of the above exception, another exception occurred:",
)


def split_traceback(text: str, ename: str = "", evalue: str = "") -> list[str]:
    """Split E2B's joined traceback string back into the lines ``python3`` shows.

    IPython's traceback is a list of entries (a rule, a header, one entry per frame ending in
    a newline, the ``Name: value`` line, notes; in a chain of exceptions a line between the
    sections, then the next header...), which front ends join with newlines. E2B's server
    joins them with ``""``: the joints are found again by the entries' shapes, and the blank
    lines that a frame's own newline and the chain lines make come back.
    """
    if not text:
        return []
    if strip_ansi(text).startswith(_EXCEPTION_ONLY):
        return text.splitlines(keepends=True)  # its entries each end in a newline
    text = _RULE.sub(r"\1\n", text)
    text = _HEADER_END.sub(r"\1\n", text)
    if ename:
        text = _unglue_tail(text, ename, evalue)
    lines: list[str] = []
    in_frame = False
    for line in text.split("\n"):
        plain = strip_ansi(line)
        source = plain[:1] == " " or (plain[:1] == "-" and plain.strip("-") != "")
        if in_frame and not source:
            in_frame = False
            if plain:
                lines.append("")  # the frame's own newline, then the joining one
        if plain in _CHAINS:
            lines += ["", line, ""] if lines and lines[-1] != "" else [line, ""]
            continue
        in_frame = in_frame or bool(_FRAME_START.match(plain))
        lines.append(line)
    while lines and lines[-1] == "":
        lines.pop()
    return lines


def _unglue_tail(text: str, ename: str, evalue: str) -> str:
    """Put the final ``Name: value`` line on its own line when it is glued to the previous,
    and what follows it (the exception's notes, glued together) on the next."""
    matches = list(re.finditer(_ANSI + re.escape(ename) + _ANSI + ":?", text))
    match = matches[-1] if matches else None
    if match is None:
        return text
    rest = strip_ansi(text[match.start() :])
    # IPython's line is "Name: value", also for an empty value ("AssertionError: ") or one
    # ending in spaces; the shorter forms are how others word it.
    forms = (f"{ename}: {evalue}", f"{ename}: {evalue}".rstrip())
    tail = next((form for form in forms if rest.startswith(form)), None)
    if tail is None and rest.startswith(f"{ename}:"):
        # The line words the value its own way (SyntaxError's leaves out the file and line
        # that its value names): the whole line is the exception's.
        tail = rest.split("\n", 1)[0]
    if tail is None and rest.startswith(ename):
        tail = ename
    if tail is None:
        return text
    start = match.start()
    if start > 0 and text[start - 1] != "\n":
        text, start = text[:start] + "\n" + text[start:], start + 1
    notes = rest[len(tail) :]
    if notes and not notes.startswith("\n"):
        end = _after_visible(text, start, len(tail))
        text = text[:end] + "\n" + text[end:]
    return text


def _after_visible(text: str, start: int, count: int) -> int:
    """The index in ``text`` after ``count`` visible characters from ``start`` (escape
    sequences are skipped, and those right after the last one are taken with it)."""
    index = start
    while True:
        escape = _ANSI_SEQUENCE.match(text, index)
        if escape is not None:
            index = escape.end()
        elif count == 0 or index >= len(text):
            return index
        else:
            index, count = index + 1, count - 1


_ANSI_SEQUENCE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    """``text`` without ANSI escape sequences (colours, cursor moves)."""
    return _ANSI_SEQUENCE.sub("", text)


STDIN_MESSAGE = (
    "input() is not available: E2B sandboxes have no stdin (the /execute protocol cannot "
    "send input requests). Put the value in the code, or pass it as an environment variable."
)


def error_to_content(error: Any) -> dict[str, Any]:
    """Return Jupyter ``error`` content for an E2B ``ExecutionError``."""
    name = str(getattr(error, "name", "") or "Error")
    value = str(getattr(error, "value", "") or "")
    traceback = split_traceback(str(getattr(error, "traceback", "") or ""), name, value)
    if name == "StdinNotImplementedError":
        # Keep the user's own frame; drop ipykernel's internals and name the real limit.
        user_part: list[str] = []
        for line in traceback[:-1]:
            if strip_ansi(line).startswith("File ") and user_part:
                break
            user_part.append(line)
        value = STDIN_MESSAGE
        traceback = [*user_part, f"{name}: {value}"]
    if not traceback and not name.endswith("ExceptionGroup"):
        traceback = [f"{name}: {value}" if value else name]
    # An exception group: IPython printed it on stderr and sent no error message, only the
    # error reply, which E2B turned into this; python3 shows the text alone (see kernel.py).
    return {"ename": name, "evalue": value, "traceback": traceback}
