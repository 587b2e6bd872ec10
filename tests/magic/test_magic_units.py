"""Pure parts of the magics: the private loop, argument parsing, pickling rules, remote errors."""

from __future__ import annotations

import asyncio
import os
import pickle
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from e2b_kernel.core import hidden
from e2b_kernel.errors import E2BRemoteError, TransferError, remote_error
from e2b_kernel.magic.arguments import parse_env
from e2b_kernel.magic.loop_thread import LoopThread
from e2b_kernel.magic.transfer import dumps_for_sandbox, read_pull_report, safe_loads


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread("test-loop")
    yield thread
    thread.stop()


def test_loop_thread_runs_coroutines_off_the_calling_thread(loop_thread: LoopThread) -> None:
    async def where() -> str:
        return threading.current_thread().name

    assert loop_thread.run(where()) == "test-loop"
    assert threading.current_thread().name != "test-loop"


def test_loop_thread_iterates_items_in_order_and_reraises(loop_thread: LoopThread) -> None:
    async def produce() -> AsyncIterator[int]:
        for i in range(5):
            await asyncio.sleep(0)
            yield i
        raise ValueError("after five")

    seen = []
    with pytest.raises(ValueError, match="after five"):
        for item in loop_thread.iterate(produce()):
            seen.append(item)
    assert seen == [0, 1, 2, 3, 4]


def test_closing_the_iterator_cancels_the_producer(loop_thread: LoopThread) -> None:
    cancelled = threading.Event()

    async def endless() -> AsyncIterator[int]:
        try:
            while True:
                yield 1
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    items = loop_thread.iterate(endless())
    assert next(items) == 1
    items.close()  # what an exception or Ctrl-C in the consumer does
    assert cancelled.is_set()  # iterate() waited for the producer to unwind


def test_ctrl_c_while_waiting_cancels_the_task_and_reraises(loop_thread: LoopThread) -> None:
    started, cancelled = threading.Event(), threading.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    def interrupt_when_started() -> None:
        started.wait(30)
        import signal

        os.kill(os.getpid(), signal.SIGINT)  # a real SIGINT, as a kernel interrupt sends

    threading.Thread(target=interrupt_when_started, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        loop_thread.run(forever())
    assert cancelled.is_set()


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        (["A=1"], {"A": "1"}),
        (["A=x=y", "B="], {"A": "x=y", "B": ""}),
        (['Q=it\'s "quoted"'], {"Q": 'it\'s "quoted"'}),
    ],
)
def test_parse_env_accepts_key_value(pairs: list[str], expected: dict[str, str]) -> None:
    assert parse_env(pairs) == expected


@pytest.mark.parametrize("pair", ["NOVALUE", "=x", "1A=x", "A-B=x", "E2B_API_KEY=secret"])
def test_parse_env_rejects_with_usage_error(pair: str) -> None:
    with pytest.raises(UsageError):
        parse_env([pair])


def test_pickles_round_trip_plain_data_numpy_and_pandas() -> None:
    frame = pd.DataFrame(
        {"a": [1, 2], "t": pd.to_datetime(["2020-01-01", "2021-06-01"]), "c": ["x", "y"]},
        index=pd.Index(["r1", "r2"], name="row"),
    )
    values = {
        "d": {"k": [1, 2.5, None, (1, "x")], "s": {1, 2}},
        "arr": np.arange(12, dtype=np.float32).reshape(3, 4),
        "frame": frame,
        "series": frame["a"],
    }
    for name, value in values.items():
        back = safe_loads(name, dumps_for_sandbox(name, value, 10**8))
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(back, value)
            assert back.dtype == value.dtype
        elif isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(back, value)
        elif isinstance(value, pd.Series):
            pd.testing.assert_series_equal(back, value)
        else:
            assert back == value


class _RunsCommand:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo owned",))


def test_pulled_pickles_that_call_functions_are_refused() -> None:
    data = pickle.dumps(_RunsCommand())
    with pytest.raises(TransferError, match=r"refusing to load posix\.system.*--unsafe-pickle"):
        safe_loads("x", data)


def test_pulled_pickles_cannot_build_file_touching_classes() -> None:
    with pytest.raises(TransferError, match="refusing"):
        safe_loads("x", pickle.dumps(np.memmap))


@pytest.mark.parametrize("module", ["side_effect_on_import", "numpy.__main__"])
def test_pulled_pickles_do_not_import_the_modules_they_name(
    module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sandbox names the module: importing it to judge it would run its top-level code
    on this host (a module that writes a file here; a ``__main__`` module runs main())."""
    marker = tmp_path / "imported"
    (tmp_path / "side_effect_on_import.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran on the host')\nname = 1\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    data = f"c{module}\nname\n.".encode()  # what a sandbox's replaced pickle.dumps returns
    with pytest.raises(TransferError, match=f"refusing to load {module}.name"):
        safe_loads("x", data)
    assert not marker.exists()
    assert module not in sys.modules


def test_push_size_cap_names_the_variable_and_the_setting() -> None:
    with pytest.raises(TransferError, match=r"-i big: .*transfer_limit"):
        dumps_for_sandbox("big", b"x" * 2000, limit=1000)


def test_unpicklable_push_is_a_clear_error() -> None:
    with pytest.raises(TransferError, match="-i gen: generator cannot be pickled"):
        dumps_for_sandbox("gen", (i for i in range(3)), limit=1000)


def test_pull_report_errors_name_the_variable() -> None:
    mark = hidden.MARKER
    with pytest.raises(TransferError, match=r"-o df: .* exceeds the transfer limit"):
        read_pull_report(mark + '{"df": {"status": "too_big", "size": 5000}}\n', 1000)
    with pytest.raises(TransferError, match="no variable named 'y'"):
        read_pull_report(mark + '{"y": {"status": "missing"}}\n', 1000)
    assert read_pull_report(f'noise\n{mark}{{"z": {{"status": "ok", "size": 7}}}}\n', 10) == {
        "z": 7
    }


def test_remote_error_keeps_the_remote_name_and_traceback() -> None:
    err = remote_error(
        {"ename": "ZeroDivisionError", "evalue": "division by zero", "traceback": ["tb1", "tb2"]}
    )
    assert isinstance(err, E2BRemoteError)
    assert isinstance(err, ZeroDivisionError)  # builtin names can be caught as such
    assert type(err).__name__ == "E2BRemoteError"
    assert str(err) == "ZeroDivisionError: division by zero"
    assert err._render_traceback_() == ["tb1", "tb2"]
    custom = remote_error({"ename": "MyError", "evalue": "x", "traceback": []})
    assert type(custom) is E2BRemoteError and str(custom) == "MyError: x"


@pytest.fixture
def shell() -> Iterator[InteractiveShell]:
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "e2b_kernel")
    yield ip
    ip.run_line_magic("unload_ext", "e2b_kernel")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("%%e2b --bogus\n1", "unrecognized arguments: --bogus"),
        ("%%e2b --timeout soon\n1", "invalid float value"),
        ("%%e2b --timeout -1\n1", "--timeout must be a positive number"),
        ("%%e2b --env NOEQUALS\n1", "--env expects KEY=VALUE"),
        ("%%e2b -i not_defined_here\n1", "no variable named 'not_defined_here'"),
        ("%%e2b -o 1bad\n1", "expected a variable name"),
        ("%%e2b --language bash -o x\necho", "need --language python"),
        ("%e2b", "%e2b needs a command"),
        ("%e2b frobnicate", "invalid choice: 'frobnicate'"),
        ("%e2b timeout", "required: SECONDS"),
        ("%e2b upload", "required: LOCAL"),
        ("%e2b connect", "required: ID"),
        ("%e2b status --sandbox ''", "a sandbox name cannot be blank"),
        ("%%e2b --sandbox ' '\n1", "a sandbox name cannot be blank"),
    ],
)
def test_bad_arguments_are_usage_errors(
    shell: InteractiveShell, source: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = shell.run_cell(source)
    assert isinstance(result.error_in_exec, UsageError)
    assert message in str(result.error_in_exec)
    assert "Traceback" not in capsys.readouterr().out


def test_restarting_a_sandbox_that_never_started_starts_none(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped name made a new sandbox (seconds) and said it restarted it."""
    result = shell.run_cell("%e2b restart --sandbox typo")
    assert result.error_in_exec is None
    assert "sandbox 'typo' is not running" in capsys.readouterr().out
    assert "typo" not in shell._e2b_magics.sessions


def test_help_is_the_docstring_with_usage_and_examples(shell: InteractiveShell) -> None:
    cell_doc = shell.find_cell_magic("e2b").__doc__
    assert cell_doc.lstrip(": \n").startswith("%%e2b [--sandbox NAME]")
    assert "Examples" in cell_doc and "-i VAR" in cell_doc and "--unsafe-pickle" in cell_doc
    line_doc = shell.find_line_magic("e2b").__doc__
    for command in ("status", "connect ID", "upload LOCAL [REMOTE]", "download", "list", "env"):
        assert command in line_doc


def test_line_arguments_are_not_dollar_expanded(shell: InteractiveShell) -> None:
    shell.user_ns["HOME_LOCAL"] = "expanded!"
    shell.run_cell("%e2b env TOKEN=$HOME_LOCAL")
    magics = shell._e2b_magics
    assert magics.env["default"] == {"TOKEN": "$HOME_LOCAL"}


def test_bad_configuration_is_one_line_naming_the_variable(
    shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("E2B_KERNEL_SANDBOX_TIMEOUT", "forever")
    result = shell.run_cell("%%e2b\n1")
    assert type(result.error_in_exec).__name__ == "ConfigurationError"
    shown = capsys.readouterr().out
    assert "E2B_KERNEL_SANDBOX_TIMEOUT" in shown and "Traceback" not in shown


@pytest.mark.parametrize("source", ["%%e2b -h\n1", "%e2b -h", "%e2b upload -h"])
def test_dash_h_prints_help_without_exiting(
    shell: InteractiveShell, source: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = shell.run_cell(source)
    assert result.error_in_exec is None
    shown = capsys.readouterr().out
    assert "%e2b" in shown and "Examples" in shown


def test_a_line_command_error_outside_the_loop_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``%e2b list`` on the cloud backend without a key: one line naming the fix, no stack."""
    from IPython.utils.capture import capture_output

    monkeypatch.setenv("E2B_KERNEL_BACKEND", "cloud")
    monkeypatch.delenv("E2B_API_KEY", raising=False)
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "e2b_kernel")
    try:
        with capture_output() as captured:
            result = ip.run_cell("%e2b list")
    finally:
        ip.run_line_magic("unload_ext", "e2b_kernel")
    assert type(result.error_in_exec).__name__ == "ConfigurationError"
    assert "E2B_API_KEY is not set" in captured.stdout
    assert "commands.py" not in captured.stdout and "Traceback" not in captured.stdout


def test_a_prompt_whose_cell_ended_is_closed_and_never_opened_late(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """%%e2b --timeout while input() waits: the question here is closed (as Ctrl-C would),
    and one that had not been shown yet is never shown."""
    import time

    from e2b_kernel.magic import display

    asked: list[str] = []

    def slow_user(content: dict) -> str:
        asked.append(content["prompt"])
        time.sleep(30)  # a user who never answers; the close interrupts this
        return "too late"

    monkeypatch.setattr(display, "ask_locally", slow_user)
    prompt = display.LocalPrompt()

    def close_once_asking() -> None:
        while not prompt._asking:  # the question is on screen
            time.sleep(0.01)
        prompt.close()

    closer = threading.Thread(target=close_once_asking)
    closer.start()
    assert prompt.ask({"prompt": "never answered: "}) is None  # not "too late"
    closer.join()
    assert asked == ["never answered: "]

    ended_first = display.LocalPrompt()
    ended_first.close()
    assert ended_first.ask({"prompt": "after the end: "}) is None
    assert asked == ["never answered: "]  # never shown
