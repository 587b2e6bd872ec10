"""Jupyter iopub messages -> the NDJSON lines of E2B's `/execute` stream (spec 3.2-3.6)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

# MIME type -> field of a `result` line, in the order `Result.formats()` lists them.
_MIME_FIELDS: tuple[tuple[str, str], ...] = (
    ("text/plain", "text"),
    ("text/html", "html"),
    ("text/markdown", "markdown"),
    ("image/svg+xml", "svg"),
    ("image/png", "png"),
    ("image/jpeg", "jpeg"),
    ("application/pdf", "pdf"),
    ("text/latex", "latex"),
    ("application/json", "json"),
    ("application/javascript", "javascript"),
    ("e2b/data", "data"),
    ("e2b/chart", "chart"),
)
_KNOWN_MIMES = {mime for mime, _ in _MIME_FIELDS}

KEEPALIVE: dict[str, Any] = {"type": "keepalive"}
END_OF_EXECUTION: dict[str, Any] = {"type": "end_of_execution"}


def encode(line: dict[str, Any]) -> bytes:
    """One NDJSON line as E2B writes it: `json.dumps` default separators, newline-terminated."""
    return (json.dumps(line) + "\n").encode("utf-8")


def strip_quotes(text: str) -> str:
    """Remove one pair of surrounding quotes, as E2B does for `text/plain` (`'bar'` -> `bar`)."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def result_line(data: dict[str, Any], *, is_main_result: bool) -> dict[str, Any]:
    """A `result` line from a MIME bundle; null fields left out, `extra` always present."""
    line: dict[str, Any] = {"type": "result"}
    for mime, field in _MIME_FIELDS:
        value = data.get(mime)
        if value is None:
            continue
        if field == "text" and isinstance(value, str):
            value = strip_quotes(value)
        line[field] = value
    line["extra"] = {mime: value for mime, value in data.items() if mime not in _KNOWN_MIMES}
    line["is_main_result"] = is_main_result
    return line


def timestamp(header: dict[str, Any]) -> str:
    """ISO timestamp of a Jupyter message header (jupyter_client parses `date` to datetime)."""
    date = header.get("date")
    if isinstance(date, datetime):
        return date.isoformat()
    if isinstance(date, str) and date:
        return date
    return datetime.now().astimezone().isoformat()


def stream_line(msg: dict[str, Any]) -> dict[str, Any]:
    """A `stdout`/`stderr` line for one iopub `stream` message."""
    name = "stderr" if msg["content"].get("name") == "stderr" else "stdout"
    return {
        "type": name,
        "text": msg["content"].get("text", ""),
        "timestamp": timestamp(msg["header"]),
    }


def error_line(name: str, value: str, traceback: str | list[str] = "") -> dict[str, Any]:
    """An `error` line; the traceback is one joined string, as E2B sends it."""
    if isinstance(traceback, list):
        traceback = "".join(str(part) for part in traceback)
    return {"type": "error", "name": name, "value": value, "traceback": traceback}


def iopub_line(msg: dict[str, Any]) -> dict[str, Any] | None:
    """The line for one iopub message of the tracked execution, or None if E2B drops it."""
    msg_type = msg["header"]["msg_type"]
    content = msg["content"]
    if msg_type == "execute_input":
        return {"type": "number_of_executions", "execution_count": content.get("execution_count")}
    if msg_type == "stream":
        return stream_line(msg)
    if msg_type == "display_data":
        return result_line(content.get("data", {}), is_main_result=False)
    if msg_type == "execute_result":
        return result_line(content.get("data", {}), is_main_result=True)
    if msg_type == "error":
        return error_line(
            content.get("ename", ""), content.get("evalue", ""), content.get("traceback", [])
        )
    # clear_output, update_display_data, comm_*, status and the rest: dropped like E2B does.
    return None
