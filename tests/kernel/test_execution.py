"""Execution through a real E2B Python kernel: streaming, outputs, errors, completion."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from jupyter_client.manager import start_new_kernel

from e2b_kernel.core.outputs import strip_ansi

from .conftest import BACKENDS, TRANSPORTS
from .harness import Kernel

pytestmark = pytest.mark.timeout(240)

StartKernel = Callable[..., Kernel]
BackendEnv = Callable[..., dict[str, str]]
# Tests not parametrized run on the default transport (``auto``: jupyter on both backends).
EXECUTE_ONLY = pytest.mark.parametrize("transport", ["execute"], indirect=True)


def python3_error(code: str) -> dict[str, Any]:
    """The ``error`` content the stock ``python3`` kernel publishes for ``code``."""
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        msg_id = kc.execute(code)
        while True:
            msg = kc.get_iopub_msg(timeout=60)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "error":
                return dict(msg["content"])
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.mark.parametrize("backend_env", BACKENDS, indirect=True)
def test_streams_arrive_while_the_cell_runs_in_order(
    start_kernel: StartKernel, backend_env: BackendEnv
) -> None:
    kernel = start_kernel(backend_env())
    assert kernel.value("x = 41\nx + 1") == "42"
    code = (
        "import sys, time\n"
        "print('first', flush=True)\n"
        "time.sleep(3)\n"  # 2 s more than the gap asked for below: room for a loaded machine
        "print('second')\n"
        "print('to stderr', file=sys.stderr)\n"
        "from IPython.display import display, HTML\n"
        "display(HTML('<b>shown</b>'))\n"
        "print('last')\n"
        "x"
    )
    reply, outputs = kernel.run(code)
    assert reply["status"] == "ok"
    kinds = [(o.msg_type, o.content.get("name"), o.content.get("text")) for o in outputs]
    assert kinds == [
        ("stream", "stdout", "first\n"),
        ("stream", "stdout", "second\n"),
        ("stream", "stderr", "to stderr\n"),
        ("display_data", None, None),
        ("stream", "stdout", "last\n"),
        ("execute_result", None, None),
    ]
    gap = outputs[1].at - outputs[0].at
    assert gap > 1.0, f"the first line did not arrive before the sleep ended (gap {gap:.2f} s)"
    result = outputs[-1].content
    assert result["execution_count"] == reply["execution_count"]
    assert result["data"]["text/plain"] == "41"


def test_every_mime_type_and_extra_reaches_display_data(
    start_kernel: StartKernel, backend_env: BackendEnv
) -> None:
    # Trusted: JavaScript is held back otherwise (tests/kernel/test_output_guard.py).
    kernel = start_kernel(backend_env(E2B_KERNEL_TRUST_OUTPUTS="1"))
    bundle = {
        "text/plain": "plain",
        "text/html": "<i>html</i>",
        "text/markdown": "**md**",
        "image/svg+xml": "<svg xmlns='http://www.w3.org/2000/svg'/>",
        "image/png": (
            "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJ"
            "RU5ErkJggg=="
        ),
        "image/jpeg": "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAP//////////",
        "application/pdf": "JVBERi0xLjQK",
        "text/latex": "$x^2$",
        "application/json": {"a": [1, 2, {"b": None}]},
        "application/javascript": "console.log('js')",
        "application/vnd.custom+json": {"k": "v"},
        "text/x-custom": "custom text",
    }
    reply, outputs = kernel.run(
        f"from IPython.display import display\ndisplay({bundle!r}, raw=True)"
    )
    assert reply["status"] == "ok"
    assert [o.msg_type for o in outputs] == ["display_data"]
    assert outputs[0].content["data"] == bundle


@pytest.mark.parametrize("transport", TRANSPORTS, indirect=True)
def test_list_and_dict_results_show_only_their_text_as_on_python3(
    start_kernel: StartKernel, backend_env: BackendEnv
) -> None:
    # The sandbox's kernel gives them an application/json copy for Result.json, as E2B's does.
    kernel = start_kernel(backend_env())
    for code in ("{'a': 1, 'b': [1, 2]}", "[1, 2, 3]"):
        _, outputs = kernel.run(code)
        results = [o.content for o in outputs if o.msg_type == "execute_result"]
        assert [r["data"] for r in results] == [{"text/plain": code}]
        assert results[0]["metadata"] == {}
    _, outputs = kernel.run("from IPython.display import JSON, display\ndisplay(JSON({'k': 1}))")
    (shown,) = [o.content for o in outputs if o.msg_type == "display_data"]
    assert shown["data"]["application/json"] == {"k": 1}  # what the code displayed stays


@pytest.mark.parametrize("transport", TRANSPORTS, indirect=True)
def test_a_fresh_namespace_is_empty_as_on_python3(
    start_kernel: StartKernel, backend_env: BackendEnv
) -> None:
    """The sandbox's env vars were set with ``import os`` in the user's namespace: ``os``
    worked without an import, until a restart."""
    kernel = start_kernel(backend_env(E2B_KERNEL_FORWARD_ENV="HOME"))
    _, outputs = kernel.run("%who")
    assert [o.content.get("text") for o in outputs] == ["Interactive namespace is empty.\n"]


@pytest.mark.parametrize("transport", TRANSPORTS, indirect=True)
def test_the_notebook_names_its_session_as_on_python3(
    start_kernel: StartKernel, backend_env: BackendEnv
) -> None:
    """ipykernel sets ``__session__`` from the ``JPY_SESSION_NAME`` its Jupyter Server passes
    (the notebook's path); the sandbox's kernel had its own server's session id instead, and
    on the execute transport no name at all. After a restart too."""
    named = start_kernel(backend_env(JPY_SESSION_NAME="/home/me/analysis.ipynb"))
    asked = "__session__, __import__('os').environ.get('JPY_SESSION_NAME')"
    expected = "('/home/me/analysis.ipynb', '/home/me/analysis.ipynb')"
    assert named.value(asked) == expected
    named.km.restart_kernel(now=False)
    named.kc.wait_for_ready(timeout=60)
    assert named.value(asked) == expected
    named.shutdown()
    unnamed = start_kernel(backend_env())
    asked = "'__session__' in globals(), 'JPY_SESSION_NAME' in __import__('os').environ"
    assert unnamed.value(asked) == "(False, False)"  # python3 started without a name


# Counts what the sandbox's kernel derives from results beyond python3's own formatters:
# E2B's e2b/data copy of a DataFrame (its every value: 9 s for a million rows, a killed kernel
# for six million) and application/json copy of a list.
_DERIVING_SPIES = """
import pandas as pd
import IPython.core.formatters as _formatters
calls = []
class Spy(pd.DataFrame):
    @property
    def _constructor(self):
        return Spy
    def to_dict(self, *args, **kwargs):
        calls.append('to_dict')
        return super().to_dict(*args, **kwargs)
class Items(list):
    def __iter__(self):
        import traceback
        if any('jsonable' in str(f) for f in traceback.extract_stack()):
            calls.append('json copy')
        return super().__iter__()
"""


@pytest.mark.parametrize("transport", TRANSPORTS, indirect=True)
def test_nothing_is_derived_from_results_or_saved_images_beyond_python3(
    start_kernel: StartKernel, backend_env: BackendEnv
) -> None:
    """E2B's template derives outputs for /execute clients (the kernel drops them) and shows
    every image PIL saves to a path (so every plt.savefig) or shows: a notebook loop writing
    thumbnails filled the notebook. python3 does none of this, and now neither does the
    sandbox's kernel once the notebook's kernel has set python3's look."""
    kernel = start_kernel(backend_env())
    assert kernel.run(_DERIVING_SPIES)[0]["status"] == "ok"
    _, outputs = kernel.run("Spy({'a': [1, 2]})")
    (result,) = [o.content for o in outputs if o.msg_type == "execute_result"]
    assert set(result["data"]) == {"text/html", "text/plain"}
    kernel.run("Items([1, 2])")
    assert kernel.value("calls") == "[]"
    code = "from PIL import Image\nimage = Image.new('RGB', (4, 4))\n"
    code += "for n in range(3):\n    image.save(f'thumb{n}.png')\nimage.show()"
    reply, outputs = kernel.run(code)
    assert reply["status"] == "ok" and outputs == [], outputs
    assert kernel.value("import os\nsorted(f for f in os.listdir() if f.startswith('thumb'))") == (
        "['thumb0.png', 'thumb1.png', 'thumb2.png']"
    )


def test_matplotlib_and_pandas_render_inline(
    start_kernel: StartKernel, backend_env: BackendEnv
) -> None:
    kernel = start_kernel(backend_env())
    reply, outputs = kernel.run(
        "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('t')\nplt.show()"
    )
    assert reply["status"] == "ok", outputs
    images = [o for o in outputs if o.msg_type == "display_data"]
    assert len(images) == 1
    assert images[0].content["data"]["image/png"].startswith("iVBORw0KGgo")
    reply, outputs = kernel.run("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': [3, 4]})")
    assert reply["status"] == "ok", outputs
    (table,) = [o for o in outputs if o.msg_type == "execute_result"]
    assert "<table" in table.content["data"]["text/html"]
    assert "a  b" in table.content["data"]["text/plain"]


@pytest.mark.parametrize(
    ("backend_env", "transport"),
    [("private-local", "execute"), ("private-local", "jupyter"), ("service", "jupyter")],
    indirect=True,
)
def test_error_is_iopub_error_then_error_reply(
    start_kernel: StartKernel, backend_env: BackendEnv, transport: str
) -> None:
    code = "def f():\n    return 1 / 0\n\nf()"
    kernel = start_kernel(backend_env())
    reply, outputs = kernel.run(code)
    assert [o.msg_type for o in outputs] == ["error"]
    error = outputs[0].content
    assert error["ename"] == "ZeroDivisionError"
    assert error["evalue"] == "division by zero"
    assert isinstance(error["traceback"], list) and len(error["traceback"]) > 2
    assert "ZeroDivisionError" in error["traceback"][-1]
    # In python3's colours (E2B's template starts its kernels without any).
    assert "\x1b[31mZeroDivisionError" in "".join(error["traceback"]), error["traceback"]
    expected = python3_error(code)
    if transport == "execute":
        # E2B's /execute sends the traceback as one text: it comes back one line per entry.
        assert all("\n" not in line for line in error["traceback"])
    else:
        # Relayed as the remote ipykernel sent it: python3's, one entry per frame (entries
        # hold newlines), not re-split.
        assert error["traceback"] == expected["traceback"]
    assert reply["status"] == "error"
    assert (reply["ename"], reply["evalue"]) == ("ZeroDivisionError", "division by zero")
    assert reply["traceback"] == error["traceback"]
    assert (reply["payload"], reply["user_expressions"]) == ([], {})  # as ipykernel's
    assert reply["engine_info"]["method"] == "execute"  # ipykernel's (read by ipyparallel)


@pytest.mark.parametrize("transport", ["execute", "jupyter"], indirect=True)
def test_stop_on_error_aborts_queued_cells(
    start_kernel: StartKernel, backend_env: BackendEnv, transport: str
) -> None:
    kernel = start_kernel(backend_env())
    failing = kernel.send("import time; time.sleep(1); 1/0")
    # "Run all": every cell queued behind the failed one is aborted, whatever its own flag.
    queued = [kernel.send(f"queued_{n} = True") for n in range(3)]
    queued.append(kernel.send("queued_3 = True", stop_on_error=False))
    assert kernel.reply(failing)["status"] == "error"
    assert [kernel.reply(msg_id)["status"] for msg_id in queued] == ["aborted"] * 4
    _, outputs = kernel.run("[name for name in globals() if name.startswith('queued_')]")
    assert outputs[-1].content["data"]["text/plain"] == "[]"
    kept = kernel.send("1/0", stop_on_error=False)
    after = kernel.send("after = 1")
    assert kernel.reply(kept)["status"] == "error"
    assert kernel.reply(after)["status"] == "ok"


@EXECUTE_ONLY  # on jupyter, input() works: tests/kernel/test_jupyter_transport.py
def test_input_fails_at_once_naming_the_limit(
    start_kernel: StartKernel, backend_env: BackendEnv
) -> None:
    kernel = start_kernel(backend_env())
    reply, outputs = kernel.run("name = input('name? ')")
    assert reply["status"] == "error"
    assert [o.msg_type for o in outputs] == ["error"]
    assert "no stdin" in outputs[0].content["evalue"]
    assert "E2B" in outputs[0].content["evalue"]
    # Neither this process's debugger (it would debug the relay, not the cells) nor its
    # subshells are offered.
    info = kernel.kc.kernel_info(reply=True, timeout=60)["content"]
    assert info["supported_features"] == [] and "Transport: execute" in info["banner"]


def test_completion_and_inspection_use_the_live_namespace(
    start_kernel: StartKernel, backend_env: BackendEnv
) -> None:
    kernel = start_kernel(backend_env())
    kernel.run("my_special_value = 12345")
    count_before = kernel.run("1")[0]["execution_count"]
    reply = kernel.kc.complete("my_spec", 7, reply=True, timeout=60)["content"]
    assert reply["status"] == "ok"
    assert reply["matches"] == ["my_special_value"]
    assert (reply["cursor_start"], reply["cursor_end"]) == (0, 7)
    reply = kernel.kc.inspect("my_special_value", 3, reply=True, timeout=60)["content"]
    assert reply["found"] is True
    assert "12345" in reply["data"]["text/plain"]
    assert kernel.run("2")[0]["execution_count"] == count_before + 1
    assert kernel.value("_") == "2"


def test_is_complete_is_answered_locally(
    start_kernel: StartKernel, backend_env: BackendEnv
) -> None:
    kernel = start_kernel(backend_env())
    samples = {"x = 1": "complete", "for i in range(3):": "incomplete", "x = )": "invalid"}
    for code, status in samples.items():
        msg_id = kernel.kc.is_complete(code)
        assert kernel.reply(msg_id)["status"] == status, code


def test_banner_names_backend_and_isolation_but_outputs_stay_clean(
    start_kernel: StartKernel, backend_env: BackendEnv
) -> None:
    kernel = start_kernel(backend_env())
    banner = kernel.banner()
    assert "Backend: local" in banner
    assert "Isolation: bubblewrap" in banner or "NONE" in banner
    _, outputs = kernel.run("print('only this')")
    assert [(o.msg_type, o.content.get("text")) for o in outputs] == [("stream", "only this\n")]


def test_explicit_no_isolation_is_shown_in_the_banner(
    start_kernel: StartKernel, backend_env: BackendEnv
) -> None:
    kernel = start_kernel(backend_env(E2B_KERNEL_LOCAL_ISOLATION="none"))
    assert "Isolation: NONE" in kernel.banner()
    assert kernel.value("6 * 7") == "42"


# Execute only: the jupyter transport relays completion to the remote ipykernel, which answers
# it after the running cell, exactly as python3 does (its replies are then real completions).
@EXECUTE_ONLY
def test_completion_while_a_cell_runs_answers_at_once(
    start_kernel: StartKernel, backend_env: BackendEnv
) -> None:
    kernel = start_kernel(backend_env())
    kernel.run("my_special_value = 1")
    running = kernel.send("import time\nprint('started', flush=True)\ntime.sleep(6)\n'done'")
    kernel.wait_for_stream(running, "started")
    complete = kernel.kc.complete("my_spec", 7)
    inspect = kernel.kc.inspect("my_special_value", 3)
    is_complete = kernel.kc.is_complete("for x in y:")
    replies = {}
    while len(replies) < 4:
        msg = kernel.kc.get_shell_msg(timeout=60)
        replies[msg["parent_header"]["msg_id"]] = (len(replies), msg["content"])
    order = {key: position for key, (position, _) in replies.items()}
    assert order[running] == 3, "the quick requests should be answered before the cell ends"
    assert replies[complete][1]["matches"] == []
    assert replies[complete][1]["status"] == "ok"
    assert replies[inspect][1]["found"] is False
    assert replies[is_complete][1]["status"] == "incomplete"
    assert replies[running][1]["status"] == "ok"
    # Afterwards completion uses the namespace again.
    reply = kernel.kc.complete("my_spec", 7, reply=True, timeout=60)["content"]
    assert reply["matches"] == ["my_special_value"]


@pytest.mark.parametrize("transport", ["execute", "jupyter"], indirect=True)
def test_user_expressions_are_evaluated_in_the_sandbox(
    start_kernel: StartKernel, backend_env: BackendEnv, transport: str
) -> None:
    kernel = start_kernel(backend_env())
    expressions = {"double": "base * 2", "bad": "1/0", "text": "'q'"}
    msg_id = kernel.send("base = 21", user_expressions=expressions)
    reply, outputs = kernel.collect(msg_id)
    assert reply["status"] == "ok" and outputs == []
    expressions = reply["user_expressions"]
    assert expressions["double"]["status"] == "ok"
    assert expressions["double"]["data"]["text/plain"] == "42"
    assert expressions["text"]["data"] == {"text/plain": "'q'"}  # as python3: nothing else
    assert expressions["bad"]["status"] == "error"
    assert expressions["bad"]["ename"] == "ZeroDivisionError"
    assert kernel.run("1")[0]["execution_count"] == reply["execution_count"] + 1


# (code, execute options): counted and shown as IPython counts and shows them.
COUNTING = [
    ("1", {}),
    ("", {}),  # empty: no new number
    ("print('x'); display('d'); 40 + 2", {"silent": True}),  # outputs, but no result
    ("1/0", {"silent": True}),  # its error is shown
    ("40 + 2", {"store_history": False}),
    ("2", {}),
    ("1/0", {}),  # an error is a numbered cell
    ("3", {}),
]


def _counted(kc: Any, code: str, options: dict[str, Any]) -> list[tuple[str, Any]]:
    """What one request shows: each message but 'status' with its count, then the reply's."""
    msg_id = kc.execute(code, **options)
    shown: list[tuple[str, Any]] = []
    while True:
        msg = kc.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        content = msg["content"]
        if msg["msg_type"] == "status":
            if content["execution_state"] == "idle":
                break
            continue
        shown.append((msg["msg_type"], content.get("execution_count", content.get("name"))))
    while (reply := kc.get_shell_msg(timeout=60))["parent_header"].get("msg_id") != msg_id:
        pass
    return [*shown, ("reply", (reply["content"]["status"], reply["content"]["execution_count"]))]


@pytest.mark.parametrize("transport", TRANSPORTS, indirect=True)
def test_execution_counts_and_silent_cells_are_shown_as_on_python3(
    start_kernel: StartKernel, backend_env: BackendEnv
) -> None:
    """Silent, ``store_history=False`` and empty cells take no number (their results and
    replies carry the last one); silent cells still show their output and errors. On execute
    the counts advanced with every request, and silent cells showed nothing."""
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        expected = [_counted(kc, code, options) for code, options in COUNTING]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    kernel = start_kernel(backend_env())
    assert [_counted(kernel.kc, code, options) for code, options in COUNTING] == expected


CHAINED = {
    "cause": "def f():\n    try:\n        {}['missing']\n    except KeyError as e:\n"
    "        raise ValueError('wrapped') from e\nf()",
    "context": "try:\n    1/0\nexcept ZeroDivisionError:\n    int('x')",
    "frames": "def a():\n    b()\ndef b():\n    raise KeyError('k')\na()",
    # IPython's last line is "AssertionError: " (it was split into "AssertionError" and ": "),
    # and a message ending in spaces keeps them on its line.
    "empty-message": "assert 1 == 2",
    "trailing-space": "raise ValueError('ends with colon: ')",
}


def _shown(traceback: list[str]) -> str:
    """A traceback as a front end shows it, with any cell number as N."""
    return re.sub(r"In\[\d+\]", "In[N]", "\n".join(traceback))


@EXECUTE_ONLY  # on jupyter the traceback is relayed as the remote kernel sent it
@pytest.mark.parametrize("case", sorted(CHAINED))
def test_chained_and_many_frame_tracebacks_are_shown_as_on_python3(
    start_kernel: StartKernel, backend_env: BackendEnv, case: str
) -> None:
    """E2B's /execute joins IPython's traceback entries with nothing: the chain's lines and
    the blank lines between frames and sections were lost, a section's header glued to its
    first frame (``...(most recent call last)Cell In[2], line 3``)."""
    kernel = start_kernel(backend_env())
    _, outputs = kernel.run(CHAINED[case])
    (error,) = [o.content for o in outputs if o.msg_type == "error"]
    assert _shown(error["traceback"]) == _shown(python3_error(CHAINED[case])["traceback"])


@EXECUTE_ONLY
def test_exception_notes_are_not_glued_to_the_message(
    start_kernel: StartKernel, backend_env: BackendEnv
) -> None:
    kernel = start_kernel(backend_env())
    _, outputs = kernel.run("e = ValueError('bad')\ne.add_note('a note')\nraise e")
    (error,) = [o.content for o in outputs if o.msg_type == "error"]
    assert [strip_ansi(line) for line in error["traceback"][-2:]] == ["ValueError: bad", "a note"]


def _shown_kinds(kc: Any, code: str) -> tuple[list[tuple[str, Any]], tuple[str, int]]:
    """The kinds of what one cell shows (streams by name), and its reply's status and count."""
    shown = _counted(kc, code, {})
    reply = shown.pop()[1]
    return [(kind, name) for kind, name in shown if kind != "execute_input"], reply


@pytest.mark.parametrize("transport", TRANSPORTS, indirect=True)
def test_an_exception_group_is_shown_as_on_python3(
    start_kernel: StartKernel, backend_env: BackendEnv
) -> None:
    """IPython prints an exception group on stderr and sends no error message, only an error
    reply; on execute E2B's error for that reply made a second, one-line error."""
    code = "raise ExceptionGroup('g', [ValueError(1), KeyError(2)])"
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        expected = _shown_kinds(kc, code)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    kernel = start_kernel(backend_env())
    assert _shown_kinds(kernel.kc, code) == expected == ([("stream", "stderr")], ("error", 1))
    reply, _ = kernel.run("raise ExceptionGroup('g', [ValueError(1)])")
    assert (reply["status"], reply["ename"], reply["traceback"]) == ("error", "ExceptionGroup", [])
