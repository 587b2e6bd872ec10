"""The unmodified E2B SDK against the local code interpreter: state, output, results, contexts."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from e2b import NotFoundException, SandboxException
from e2b_code_interpreter import AsyncSandbox, OutputMessage, Sandbox
from e2b_code_interpreter.charts import BarChart, LineChart, PieChart, SuperChart
from local_helpers import sdk_options

from e2b_kernel.local import RunningService

GLOBAL_ENVS = {"GLOBAL_VAR": "global-value", "SHARED_VAR": "from-sandbox"}


@pytest.fixture(scope="module")
def sandbox(local_service: RunningService) -> Iterator[Sandbox]:
    sbx = Sandbox.create(envs=GLOBAL_ENVS, timeout=600, **sdk_options(local_service))
    try:
        yield sbx
    finally:
        sbx.kill()


def test_state_persists_and_execution_count_starts_at_one(local_service: RunningService) -> None:
    sbx = Sandbox.create(**sdk_options(local_service))
    try:
        first = sbx.run_code("x = 41")
        assert first.execution_count == 1
        second = sbx.run_code("x + 1")
        assert second.text == "42"
        assert second.execution_count == 2
        assert second.results[0].is_main_result is True
    finally:
        sbx.kill()


def test_cwd_is_home_user_and_sandbox_envs_are_visible(sandbox: Sandbox) -> None:
    execution = sandbox.run_code("import os; os.getcwd(), os.environ['GLOBAL_VAR']")
    assert execution.text == "('/home/user', 'global-value')"
    leaked = sandbox.run_code("import os; sorted(k for k in os.environ if 'E2B_API' in k)")
    assert leaked.text == "[]"


def test_start_up_code_leaves_the_user_namespace_clean(sandbox: Sandbox) -> None:
    names = sandbox.run_code("[n for n in dir() if 'e2b' in n.lower()]", context=None)
    assert names.text == "[]"


def test_stdout_arrives_while_the_cell_still_runs(sandbox: Sandbox) -> None:
    arrivals: list[tuple[float, str]] = []

    def on_stdout(message: OutputMessage) -> None:
        arrivals.append((time.monotonic(), message.line))

    code = "import time\nprint('first', flush=True)\ntime.sleep(4)\nprint('second')"
    execution = sandbox.run_code(code, on_stdout=on_stdout)
    finished = time.monotonic()
    assert [line for _, line in arrivals] == ["first\n", "second\n"]
    assert execution.logs.stdout == ["first\n", "second\n"]
    # The first line came while time.sleep(4) was still running, not with the end of the cell.
    assert finished - arrivals[0][0] > 1.5
    assert arrivals[0][1] and arrivals[1][0] - arrivals[0][0] > 1.5


def test_one_stdout_callback_per_print_and_stderr_separately(sandbox: Sandbox) -> None:
    lines: list[OutputMessage] = []
    errors: list[OutputMessage] = []
    code = (
        "import sys, time\n"
        "for i in range(3):\n"
        "    print(f'line {i}')\n"
        "    time.sleep(1)\n"
        "print('oops', file=sys.stderr)\n"
    )
    sandbox.run_code(code, on_stdout=lines.append, on_stderr=errors.append)
    assert [message.line for message in lines] == ["line 0\n", "line 1\n", "line 2\n"]
    assert all(not message.error and message.timestamp for message in lines)
    assert [message.line for message in errors] == ["oops\n"]
    assert errors[0].error is True


def test_every_mime_type_becomes_its_result_field(sandbox: Sandbox) -> None:
    code = """
from IPython.display import display
display({"text/html": "<b>h</b>", "text/plain": "'quoted'"}, raw=True)
display({"text/markdown": "# md"}, raw=True)
display({"image/svg+xml": "<svg></svg>"}, raw=True)
display({"image/png": "iVBORw0KGgo="}, raw=True)
display({"image/jpeg": "/9j/4AAQ"}, raw=True)
display({"application/pdf": "JVBERi0="}, raw=True)
display({"text/latex": "$x^2$"}, raw=True)
display({"application/json": {"a": [1, 2]}}, raw=True)
display({"application/javascript": "console.log(1)"}, raw=True)
display({"application/x-custom": "custom", "text/plain": "t"}, raw=True)
"main"
"""
    execution = sandbox.run_code(code)
    assert execution.error is None
    results = execution.results
    assert [list(r.formats()) for r in results] == [
        ["text", "html"],
        ["markdown"],
        ["svg"],
        ["png"],
        ["jpeg"],
        ["pdf"],
        ["latex"],
        ["json"],
        ["javascript"],
        ["text", "application/x-custom"],
        ["text"],
    ]
    assert results[0].text == "quoted" and results[0].html == "<b>h</b>"
    assert results[1].markdown == "# md"
    assert results[2].svg == "<svg></svg>"
    assert results[3].png == "iVBORw0KGgo="
    assert results[4].jpeg == "/9j/4AAQ"
    assert results[5].pdf == "JVBERi0="
    assert results[6].latex == "$x^2$"
    assert results[7].json == {"a": [1, 2]}
    assert results[8].javascript == "console.log(1)"
    assert results[9].extra == {"application/x-custom": "custom"}
    assert [r.is_main_result for r in results] == [False] * 10 + [True]
    assert execution.text == "main"


def test_matplotlib_show_gives_a_png_display_result(sandbox: Sandbox) -> None:
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [3, 1, 2])\nplt.show()"
    execution = sandbox.run_code(code, timeout=120)
    assert execution.error is None, execution.error
    (result,) = execution.results
    assert result.is_main_result is False
    assert base64.b64decode(result.png).startswith(b"\x89PNG")
    assert result.text.startswith("<Figure size")
    assert list(result.formats()) == ["text", "png", "chart"]
    assert result.extra == {}


def test_matplotlib_charts_carry_their_data(sandbox: Sandbox) -> None:
    code = """
import matplotlib.pyplot as plt
plt.plot([1, 2, 3], [4, 5, 6], label="rising")
plt.title("Line"); plt.xlabel("x"); plt.ylabel("y")
plt.show()
plt.bar(["a", "b"], [3, 4], label="group")
plt.show()
plt.pie([1, 3], labels=["small", "big"])
plt.show()
fig, (left, right) = plt.subplots(1, 2)
left.plot([1, 2]); right.scatter([1, 2], [3, 4]); fig.suptitle("Both")
plt.show()
"""
    execution = sandbox.run_code(code, timeout=120)
    assert execution.error is None, execution.error
    line, bar, pie, both = (result.chart for result in execution.results)
    assert isinstance(line, LineChart)
    assert (line.title, line.x_label, line.y_label, line.x_scale) == ("Line", "x", "y", "linear")
    assert [(e.label, e.points) for e in line.elements] == [("rising", [(1, 4), (2, 5), (3, 6)])]
    assert isinstance(bar, BarChart)
    assert [(e.label, e.group, e.value) for e in bar.elements] == [
        ("a", "group", 3),
        ("b", "group", 4),
    ]
    assert isinstance(pie, PieChart)
    assert [(e.label, e.angle) for e in pie.elements] == [("small", 90.0), ("big", 270.0)]
    assert isinstance(both, SuperChart) and both.title == "Both"
    assert [chart.type.value for chart in both.elements] == ["line", "scatter"]


def test_chart_labels_and_units_are_named_as_e2b_charts_names_them(sandbox: Sandbox) -> None:
    """e2b_charts names an unlabelled line "Line N" and an unlabelled bar group "Group N",
    takes units from the axis labels ("Time [s]", "Speed (m/s)"), and gives bar values as
    floats (they were '', no units, and ints)."""
    code = """
import matplotlib.pyplot as plt
plt.plot([1, 2], [3, 4]); plt.plot([1, 2], [5, 6])
plt.xlabel("Time [s]"); plt.ylabel("Speed (m/s)")
plt.show()
plt.bar(["a"], [3])
plt.show()
"""
    execution = sandbox.run_code(code, timeout=120)
    assert execution.error is None, execution.error
    line, bar = (result.chart for result in execution.results)
    assert [e.label for e in line.elements] == ["Line 0", "Line 1"]
    assert (line.x_unit, line.y_unit) == ("s", "m/s")
    assert [(e.label, e.group, e.value) for e in bar.elements] == [("a", "Group 0", 3.0)]
    assert isinstance(bar.elements[0].value, float)


def test_dataframe_gives_html_text_and_data(sandbox: Sandbox) -> None:
    code = (
        "import pandas as pd\n"
        "pd.DataFrame({'a': [1, 2], 'when': pd.to_datetime(['2024-01-01', '2024-02-01'])})"
    )
    execution = sandbox.run_code(code, timeout=120)
    assert execution.error is None, execution.error
    (result,) = execution.results
    assert "<table" in result.html
    assert "2024-01-01" in result.text
    assert result.data == {"a": [1, 2], "when": ["2024-01-01T00:00:00", "2024-02-01T00:00:00"]}


def test_big_results_keep_their_text_when_their_derived_copies_would_be_too_many_values(
    sandbox: Sandbox,
) -> None:
    """The derived e2b/data of a 100,000 x 4 DataFrame (or JSON of a 300,000-item list) took
    the message past the 2**18 values the service passes on, and the whole result was
    dropped: nothing shown but a notice. Past a bound they are left out; the rest shows."""
    code = "import pandas as pd, numpy as np\npd.DataFrame(np.zeros((100_000, 4)))"
    execution = sandbox.run_code(code, timeout=120)
    assert execution.error is None and not execution.logs.stderr, execution.logs
    (frame,) = execution.results
    assert "[100000 rows x 4 columns]" in frame.text and "<table" in frame.html
    assert frame.data is None
    execution = sandbox.run_code("list(range(300_000))", timeout=120)
    assert not execution.logs.stderr, execution.logs
    (items,) = execution.results
    assert items.text.startswith("[0,\n 1,\n") and items.json is None
    small = sandbox.run_code("import pandas as pd\npd.DataFrame({'a': [1]})").results[0]
    assert small.data == {"a": [1]}  # as E2B below the bound


def test_list_and_dict_results_carry_json_as_on_e2b(sandbox: Sandbox) -> None:
    # E2B's template gives list and dict results an orjson copy (numpy values, keys as text).
    code = "import numpy as np\n{'a': 1, 2: [np.int64(3), 1.5], 'n': None, 'f': float('nan')}"
    (result,) = sandbox.run_code(code).results
    assert list(result.formats()) == ["text", "json"]
    assert result.json == {"a": 1, "2": [3, 1.5], "n": None, "f": None}
    (listed,) = sandbox.run_code("[1, 'two', (3,)]").results
    assert listed.json == [1, "two", [3]]
    (unserialisable,) = sandbox.run_code("{'s': {1, 2}}").results  # orjson gives up: no json
    assert list(unserialisable.formats()) == ["text"]
    # Millions of values: no json (a message the local service would not decode), the text
    # IPython shortens stays.
    (huge,) = sandbox.run_code("list(range(2_000_000))").results
    assert list(huge.formats()) == ["text"] and huge.text.endswith("...]")
    (shown,) = sandbox.run_code("from IPython.display import JSON\nJSON({'k': [1]})").results
    assert list(shown.formats()) == ["text", "json"] and shown.json == {"k": [1]}


def test_e2b_data_comes_from_repr_e2b_data(sandbox: Sandbox) -> None:
    code = (
        "class Both:\n"
        "    def _repr_e2b_data_(self): return {'k': [1]}\n"
        "    def _repr_json_(self): return {'j': 1}\n"
        "Both()"
    )
    (result,) = sandbox.run_code(code).results
    assert result.data == {"k": [1]} and result.json == {"j": 1}


def test_error_fields_without_ansi_colours(sandbox: Sandbox) -> None:
    execution = sandbox.run_code("def f():\n    raise ValueError('boom')\nf()")
    error = execution.error
    assert error is not None
    assert (error.name, error.value) == ("ValueError", "boom")
    assert "ValueError" in error.traceback and "f()" in error.traceback
    assert "\x1b[" not in error.traceback
    assert sandbox.run_code("1 + 1").text == "2"


def test_input_fails_at_once(sandbox: Sandbox) -> None:
    started = time.monotonic()
    execution = sandbox.run_code("input('name? ')", timeout=60)
    assert execution.error is not None
    assert execution.error.name == "StdinNotImplementedError"
    assert time.monotonic() - started < 30


def test_env_vars_apply_to_one_call_and_are_restored(sandbox: Sandbox) -> None:
    code = "import os; os.getenv('CALL_VAR', 'default'), os.getenv('SHARED_VAR')"
    during = sandbox.run_code(code, envs={"CALL_VAR": "bar", "SHARED_VAR": "per-call"})
    assert during.text == "('bar', 'per-call')"
    after = sandbox.run_code(code)
    assert after.text == "('default', 'from-sandbox')"


# ipykernel 7 stops aborting after an error only when its shell channel thread posts a "stop
# aborting" message; a loaded machine can run that thread late, after the failed cell's idle.
# This cell delays that message by a second, so the late case happens every time.
DELAY_STOP_ABORTING = """
def _delay_stop_aborting(kernel=get_ipython().kernel):
    post_stop = kernel._post_dummy_stop_aborting_message
    loop = kernel.shell_channel_thread.io_loop
    kernel._post_dummy_stop_aborting_message = (
        lambda subshell: loop.call_later(1.0, post_stop, subshell)
    )
_delay_stop_aborting()
del _delay_stop_aborting
"""


def test_the_cell_after_an_error_is_not_aborted_when_the_kernel_stops_aborting_late(
    local_service: RunningService,
) -> None:
    sbx = Sandbox.create(**sdk_options(local_service))
    try:
        patched = sbx.run_code(DELAY_STOP_ABORTING)
        assert patched.error is None, patched.error
        failed = sbx.run_code("1/0", envs={"CALL_VAR": "per-call"})
        assert failed.error is not None and failed.error.name == "ZeroDivisionError", failed
        # Both the env restore after the failed cell and this cell ran, neither was aborted.
        after = sbx.run_code("import os; os.getenv('CALL_VAR', 'restored')")
        assert after.error is None, after.error
        assert after.text == "restored", after
        interrupted = sbx.run_code("raise KeyboardInterrupt")
        assert interrupted.error is not None, interrupted
        assert interrupted.error.name == "KeyboardInterrupt", interrupted.error
        kept = sbx.run_code("'kept'")
        assert kept.error is None, kept.error
        assert kept.text == "kept", kept
    finally:
        sbx.kill()


def test_bash_context(sandbox: Sandbox) -> None:
    execution = sandbox.run_code("pwd; echo $GLOBAL_VAR; export KEEP=1", language="bash")
    assert execution.logs.stdout and "".join(execution.logs.stdout).split() == [
        "/home/user",
        "global-value",
    ]
    assert "".join(sandbox.run_code("echo kept=$KEEP", language="bash").logs.stdout) == "kept=1\n"


def test_unknown_language_is_a_500_from_the_server(sandbox: Sandbox) -> None:
    with pytest.raises(SandboxException, match=r"500 Internal Server Error: .*cobol"):
        sandbox.run_code("1", language="cobol")


def test_contexts_create_list_restart_delete(sandbox: Sandbox) -> None:
    context = sandbox.create_code_context(cwd="/tmp")
    assert (context.language, context.cwd) == ("python", "/tmp")
    listed = sandbox.list_code_contexts()
    assert listed[-1].id == context.id
    assert listed[0].language == "python" and listed[0].cwd == "/home/user"

    first = sandbox.run_code("import os; y = 5; os.getcwd()", context=context)
    assert (first.text, first.execution_count) == ("/tmp", 1)
    assert sandbox.run_code("'y' in globals()").text == "False"  # contexts are separate

    sandbox.restart_code_context(context)
    restarted = sandbox.run_code("import os; 'y' in globals(), os.getcwd()", context=context)
    assert restarted.text == "(False, '/home/user')"  # state gone; cwd not set again (as E2B)
    env = sandbox.run_code("import os; os.environ['GLOBAL_VAR']", context=context)
    assert env.text == "global-value"

    sandbox.remove_code_context(context.id)
    assert context.id not in [c.id for c in sandbox.list_code_contexts()]
    with pytest.raises(NotFoundException, match="not found"):
        sandbox.run_code("1", context=context)
    with pytest.raises(NotFoundException):
        sandbox.remove_code_context(context.id)
    with pytest.raises(NotFoundException):
        sandbox.restart_code_context(context.id)


def test_async_sdk_state_streaming_and_contexts(local_service: RunningService) -> None:
    async def scenario() -> None:
        sbx = await AsyncSandbox.create(**sdk_options(local_service))
        try:
            received: list[str] = []

            async def on_stdout(message: OutputMessage) -> None:
                received.append(message.line)

            await sbx.run_code("z = 10")
            execution = await sbx.run_code("print('hi'); z * 2", on_stdout=on_stdout)
            assert (execution.text, received) == ("20", ["hi\n"])
            context = await sbx.create_code_context(language="python")
            assert (await sbx.list_code_contexts())[-1].id == context.id
            alone = await sbx.run_code("'z' in globals()", context=context)
            assert alone.text == "False"
            await sbx.remove_code_context(context)
        finally:
            await sbx.kill()

    asyncio.run(scenario())


def test_pil_image_show_comes_back_as_png(sandbox: Sandbox) -> None:
    code = "from PIL import Image\nImage.new('RGB', (8, 8), 'red').show()"
    execution = sandbox.run_code(code, timeout=60)
    assert execution.error is None, execution.error
    (result,) = execution.results
    assert base64.b64decode(result.png).startswith(b"\x89PNG")


def _run_intervals(sandbox: Sandbox, contexts: list) -> list[tuple[float, float]]:
    """Run a 2 s cell in each given context at once; the (start, end) times the kernels saw."""
    code = "import time\nstart = time.time()\ntime.sleep(2)\n(start, time.time())"
    with ThreadPoolExecutor(len(contexts)) as pool:
        runs = [pool.submit(sandbox.run_code, code, context=c, timeout=60) for c in contexts]
        texts = [run.result().text for run in runs]
    return sorted(tuple(float(x) for x in text.strip("()").split(",")) for text in texts)


def test_contexts_run_in_parallel_but_one_context_runs_one_cell_at_a_time(
    sandbox: Sandbox,
) -> None:
    first = sandbox.create_code_context()
    second = sandbox.create_code_context()
    try:
        earlier, later = _run_intervals(sandbox, [first, second])
        assert later[0] < earlier[1]  # overlapping: different contexts do not wait for each other
        earlier, later = _run_intervals(sandbox, [first, first])
        assert later[0] >= earlier[1]  # serialized on the context's lock
    finally:
        sandbox.remove_code_context(first)
        sandbox.remove_code_context(second)
