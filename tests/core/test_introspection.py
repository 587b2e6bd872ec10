"""The hidden completion/inspection code, run in a real IPython shell."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

import pytest
from IPython.core.interactiveshell import InteractiveShell

from e2b_kernel.core import hidden, introspection


@pytest.fixture
def shell() -> Iterator[InteractiveShell]:
    shell = InteractiveShell.instance()
    shell.run_cell("import os\nmy_variable = 3", store_history=False)
    yield shell
    InteractiveShell.clear_instance()


def run_hidden(shell: InteractiveShell, code: str) -> str:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        result = shell.run_cell(code)
    assert result.success and result.result is None
    return buffer.getvalue()


def test_completion_uses_the_live_namespace(shell: InteractiveShell) -> None:
    before = set(shell.user_ns)
    reply = hidden.parse_reply(run_hidden(shell, introspection.complete_code("my_v", 4)))
    assert reply is not None
    assert reply["matches"] == ["my_variable"]
    assert (reply["cursor_start"], reply["cursor_end"]) == (0, 4)
    leaked = {name for name in set(shell.user_ns) - before if not name.startswith("_")}
    assert leaked == set()


def test_inspection_finds_and_misses(shell: InteractiveShell) -> None:
    found = hidden.parse_reply(run_hidden(shell, introspection.inspect_code("os", 2, 0)))
    assert found is not None and found["found"] is True
    assert "module" in found["data"]["text/plain"]
    missing = introspection.inspect_code("no_such_name", 5, 0)
    assert hidden.parse_reply(run_hidden(shell, missing)) == (introspection.empty_inspect_reply())


def test_parse_reply_ignores_other_output() -> None:
    assert hidden.parse_reply("hello\n") is None
    assert hidden.parse_reply(hidden.MARKER + "not json") is None
