"""Unit tests of the Jupyter message -> E2B NDJSON line mapping (spec 3.3 and 3.6)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from e2b_code_interpreter.models import Execution, Result, parse_output

from e2b_kernel.local.interpreter import ndjson


def _msg(msg_type: str, content: dict) -> dict:
    date = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc)
    return {"header": {"msg_type": msg_type, "date": date}, "content": content}


def test_encode_uses_json_dumps_separators_and_one_newline() -> None:
    encoded = ndjson.encode({"type": "stdout", "text": "a\nb"})
    assert encoded == b'{"type": "stdout", "text": "a\\nb"}\n'
    assert encoded.count(b"\n") == 1


def test_text_plain_loses_one_pair_of_quotes() -> None:
    assert ndjson.strip_quotes("'bar'") == "bar"
    assert ndjson.strip_quotes('"bar"') == "bar"
    assert ndjson.strip_quotes("''bar''") == "'bar'"
    assert ndjson.strip_quotes("'bar\"") == "'bar\""
    assert ndjson.strip_quotes("'") == "'"
    assert ndjson.strip_quotes("1") == "1"


def test_every_mime_type_has_its_field_and_others_go_to_extra() -> None:
    bundle = {
        "text/plain": "'t'",
        "text/html": "<b>h</b>",
        "text/markdown": "# m",
        "image/svg+xml": "<svg/>",
        "image/png": "iVBOR",
        "image/jpeg": "/9j/",
        "application/pdf": "JVBER",
        "text/latex": "$x$",
        "application/json": {"a": 1},
        "application/javascript": "alert(1)",
        "e2b/data": {"a": [1]},
        "application/vnd.custom+json": {"k": "v"},
    }
    line = ndjson.result_line(bundle, is_main_result=True)
    assert line["text"] == "t"
    assert line["extra"] == {"application/vnd.custom+json": {"k": "v"}}
    assert line["is_main_result"] is True
    result = Result(**{k: v for k, v in line.items() if k != "type"})
    assert list(result.formats()) == [
        "text",
        "html",
        "markdown",
        "svg",
        "png",
        "jpeg",
        "pdf",
        "latex",
        "json",
        "javascript",
        "data",
        "application/vnd.custom+json",
    ]


def test_latex_only_display_has_no_text_and_extra_is_always_written() -> None:
    line = ndjson.result_line({"text/latex": "$x$"}, is_main_result=False)
    assert line == {"type": "result", "latex": "$x$", "extra": {}, "is_main_result": False}


def test_iopub_messages_map_like_e2b_and_the_sdk_parses_them() -> None:
    execution = Execution()
    messages = [
        _msg("execute_input", {"execution_count": 3, "code": "x"}),
        _msg("stream", {"name": "stdout", "text": "out\n"}),
        _msg("stream", {"name": "stderr", "text": "err\n"}),
        _msg("display_data", {"data": {"text/plain": "d"}, "metadata": {}}),
        _msg("clear_output", {"wait": False}),
        _msg("update_display_data", {"data": {"text/plain": "u"}, "metadata": {}}),
        _msg("comm_open", {"comm_id": "c", "target_name": "t", "data": {}}),
        _msg("execute_result", {"data": {"text/plain": "1"}, "metadata": {}}),
        _msg("error", {"ename": "E", "evalue": "v", "traceback": ["a\n", "b"]}),
        _msg("status", {"execution_state": "idle"}),
    ]
    lines = [line for line in map(ndjson.iopub_line, messages) if line is not None]
    assert [line["type"] for line in lines] == [
        "number_of_executions",
        "stdout",
        "stderr",
        "result",
        "result",
        "error",
    ]
    assert lines[1]["timestamp"] == "2026-01-02T03:04:05.123456+00:00"
    for line in lines:
        parse_output(execution, ndjson.encode(line).decode().rstrip("\n"))
    assert execution.execution_count == 3
    assert execution.logs.stdout == ["out\n"]
    assert execution.logs.stderr == ["err\n"]
    assert execution.text == "1"
    assert execution.error is not None and execution.error.traceback == "a\nb"
    assert json.loads(ndjson.encode(ndjson.KEEPALIVE)) == {"type": "keepalive"}
