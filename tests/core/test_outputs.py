"""E2B Result / ExecutionError -> Jupyter content."""

from __future__ import annotations

from e2b_code_interpreter.models import ExecutionError, Result

from e2b_kernel.core import text_plain
from e2b_kernel.core.outputs import (
    STDIN_MESSAGE,
    error_to_content,
    result_to_bundle,
    result_to_event,
    split_traceback,
    without_e2b_fields,
)


def test_every_named_field_maps_to_its_mime_type() -> None:
    result = Result(
        text="t",
        html="<b>h</b>",
        markdown="*m*",
        svg="<svg/>",
        png="iVBORw0KGgo=",
        jpeg="/9j/4AAQ",
        pdf="JVBERi0=",
        latex="$x$",
        json={"a": [1, 2]},
        javascript="console.log(1)",
        extra={"application/vnd.custom+json": {"k": 1}, "text/x-custom": "c"},
    )
    assert result_to_bundle(result) == {
        "text/plain": "t",
        "text/html": "<b>h</b>",
        "text/markdown": "*m*",
        "image/svg+xml": "<svg/>",
        "image/png": "iVBORw0KGgo=",
        "image/jpeg": "/9j/4AAQ",
        "application/pdf": "JVBERi0=",
        "text/latex": "$x$",
        "application/json": {"a": [1, 2]},
        "application/javascript": "console.log(1)",
        "application/vnd.custom+json": {"k": 1},
        "text/x-custom": "c",
    }


def test_derived_e2b_fields_are_left_out_and_missing_text_stays_missing() -> None:
    result = Result(latex="$y$", data={"a": [1]}, extra={})
    assert result_to_bundle(result) == {"text/latex": "$y$"}


def test_the_json_copy_e2b_derives_from_a_list_or_dict_is_left_out() -> None:
    derived = {
        "data": {"text/plain": "{'a': 1}", "application/json": {"a": 1}},
        "metadata": {"application/json": {"expanded": True}},
    }
    assert without_e2b_fields(derived) == {"data": {"text/plain": "{'a': 1}"}, "metadata": {}}
    # IPython's own JSON display always says its root: it is what the code displayed.
    shown = {
        "data": {"text/plain": "<IPython.core.display.JSON object>", "application/json": {}},
        "metadata": {"application/json": {"expanded": True, "root": "root"}},
    }
    assert without_e2b_fields(shown) == shown
    # On /execute the carrier marks list and dict results.
    carried = Result(text="[1]", json=[1], extra={text_plain.CARRIER_MIME: {"derived_json": True}})
    assert result_to_bundle(carried) == {"text/plain": "[1]"}
    assert result_to_bundle(Result(text="<JSON>", json={"k": 1}, extra={})) == {
        "text/plain": "<JSON>",
        "application/json": {"k": 1},
    }


def test_main_result_is_execute_result_and_others_display_data() -> None:
    assert result_to_event(Result(text="1", is_main_result=True))[0] == "execute_result"
    kind, content = result_to_event(Result(text="1"))
    assert kind == "display_data"
    assert content == {"data": {"text/plain": "1"}, "metadata": {}}


IPYTHON_ENTRIES = [
    "\x1b[0;31m" + "-" * 75 + "\x1b[0m",
    "\x1b[0;31mZeroDivisionError\x1b[0m                         Traceback (most recent call last)",
    "Cell \x1b[0;32mIn[1], line 3\x1b[0m\n      1 x = 1\n----> 3 \x1b[43m1\x1b[49m/0\n",
    "\x1b[0;31mZeroDivisionError\x1b[0m: division by zero",
]


def test_joined_traceback_is_split_back_into_lines_keeping_ansi() -> None:
    lines = split_traceback("".join(IPYTHON_ENTRIES), "ZeroDivisionError", "division by zero")
    assert lines[0] == IPYTHON_ENTRIES[0]
    assert lines[1] == IPYTHON_ENTRIES[1]
    assert lines[-1] == IPYTHON_ENTRIES[-1]
    assert "----> 3 \x1b[43m1\x1b[49m/0" in lines
    assert all("\n" not in line for line in lines)


def test_glued_final_line_without_colours_is_separated() -> None:
    entries = ["-" * 75, "NameError   Traceback (most recent call last)", "src", "NameError: x"]
    assert split_traceback("".join(entries), "NameError", "x") == [
        "-" * 75,
        "NameError   Traceback (most recent call last)",
        "src",
        "NameError: x",
    ]


def test_a_final_line_that_words_its_value_otherwise_stays_whole() -> None:
    """SyntaxError's line leaves out the file and line its value names."""
    entries = [
        "  Cell In[1], line 1\n    def f(:\n          ^\n",
        "\x1b[31mSyntaxError\x1b[39m\x1b[31m:\x1b[39m invalid syntax\n",
    ]
    lines = split_traceback("".join(entries), "SyntaxError", "invalid syntax (3.py, line 1)")
    assert lines[-1] == "\x1b[31mSyntaxError\x1b[39m\x1b[31m:\x1b[39m invalid syntax"
    assert lines[-2].strip() == "^"


def test_error_content_has_name_value_and_line_list() -> None:
    content = error_to_content(ExecutionError("ValueError", "bad", "ValueError: bad"))
    assert content == {"ename": "ValueError", "evalue": "bad", "traceback": ["ValueError: bad"]}


def test_error_without_traceback_still_has_one_line() -> None:
    content = error_to_content(ExecutionError("Boom", "", ""))
    assert content["traceback"] == ["Boom"]


def test_stdin_error_names_the_limit_and_drops_internals() -> None:
    text = (
        "-" * 75
        + "StdinNotImplementedError   Traceback (most recent call last)"
        + "Cell In[4], line 1\n----> 1 input('x')\n"
        + "File /site-packages/ipykernel/kernelbase.py:1514, in Kernel.raw_input(self)\n"
        + "-> 1514     raise StdinNotImplementedError(msg)\n"
        + "StdinNotImplementedError: raw_input was called"
    )
    content = error_to_content(
        ExecutionError("StdinNotImplementedError", "raw_input was called", text)
    )
    assert content["evalue"] == STDIN_MESSAGE
    assert "stdin" in content["evalue"]
    assert not any("kernelbase" in line for line in content["traceback"])
    assert "----> 1 input('x')" in content["traceback"]
    assert content["traceback"][-1].endswith(STDIN_MESSAGE)


# IPython's entries for a chained exception without colours (E2B's template), as a front end
# joins them with newlines; E2B's /execute joins them with nothing.
CHAINED_ENTRIES = [
    "-" * 75,
    "KeyError                                  Traceback (most recent call last)",
    "Cell In[1], line 5, in f()\n      3         {}['missing']\n----> 5         raise e\n",
    "KeyError: 'missing'",
    "\nThe above exception was the direct cause of the following exception:\n",
    "ValueError                                Traceback (most recent call last)",
    "Cell In[1], line 6\n      5         raise ValueError('wrapped') from e\n----> 6 f()\n",
    "Cell In[1], line 5, in f()\n      1 def f():\n----> 5         raise ValueError('wrapped')\n",
    "ValueError: wrapped",
    "a note",
]


def test_a_chained_traceback_is_split_into_the_lines_python3_shows() -> None:
    joined = "".join(CHAINED_ENTRIES)
    assert split_traceback(joined, "ValueError", "wrapped") == "\n".join(CHAINED_ENTRIES).split(
        "\n"
    )


def test_an_exception_only_traceback_keeps_python3s_entries() -> None:
    """``raise SystemExit('bye')``: IPython sends two entries, each ending in a newline (so a
    front end shows a blank line between them); split at the newlines, they had none."""
    python3 = [
        "An exception has occurred, use %tb to see the full traceback.\n",
        "\x1b[31mSystemExit\x1b[39m\x1b[31m:\x1b[39m bye\n",
    ]
    assert split_traceback("".join(python3), "SystemExit", "bye") == python3
