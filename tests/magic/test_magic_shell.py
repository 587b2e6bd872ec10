"""``%%e2b`` and ``%e2b`` inside IPython's ``InteractiveShell`` against the local service."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from e2b_kernel.core.outputs import strip_ansi
from e2b_kernel.errors import E2BRemoteError

# What a cell does is checked on the jupyter transport and on its /execute fallback.
BOTH_TRANSPORTS = pytest.mark.parametrize("shell", ["jupyter", "execute"], indirect=True)


def run(shell: InteractiveShell, source: str) -> Any:
    """Run a cell, returning IPython's ExecutionResult."""
    return shell.run_cell(source, store_history=True)


class _Tee:
    """A stdout that calls ``hook(text)`` for every write, so tests can react mid-cell."""

    def __init__(self, hook: Any) -> None:
        self.parts: list[str] = []
        self.hook = hook

    def write(self, text: str) -> int:
        self.parts.append(text)
        self.hook(text)
        return len(text)

    def flush(self) -> None:
        pass


@BOTH_TRANSPORTS
def test_output_streams_while_the_cell_still_runs(
    shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cell prints, then waits for a file that only this side creates after *seeing* the
    # print. Without streaming the cell would time out waiting and report "not released".
    magics = shell._e2b_magics
    run(shell, "%%e2b\nimport os")

    def release(text: str) -> None:
        if "waiting" in text:
            session = magics.sessions["default"]
            magics.loop.run(session.sandbox.files.write("/home/user/release", b"go"))

    tee = _Tee(release)
    monkeypatch.setattr(sys, "stdout", tee)
    cell = """\
        %%e2b
        import os, sys, time
        print("waiting", flush=True)
        deadline = time.monotonic() + 60
        while not os.path.exists("/home/user/release") and time.monotonic() < deadline:
            time.sleep(0.05)
        print("released" if os.path.exists("/home/user/release") else "not released")
        print("to stderr", file=sys.stderr)
        """
    result = run(shell, textwrap.dedent(cell))
    monkeypatch.undo()
    assert result.error_in_exec is None
    assert "".join(tee.parts).split() == ["waiting", "released"]


@BOTH_TRANSPORTS
def test_stdout_and_stderr_keep_their_order_and_last_value_is_the_result(
    shell: InteractiveShell,
) -> None:
    cell = "%%e2b\nimport sys\nfor i in range(3):\n    print(i, flush=True)\n6 * 7\n"
    with capture_output() as captured:
        result = run(shell, cell)
    assert result.error_in_exec is None
    assert captured.stdout.startswith("0\n1\n2\n")
    assert repr(result.result) == "42"
    with capture_output() as captured:
        run(shell, "%%e2b\nimport sys\nprint('E', file=sys.stderr, flush=True)")
    assert captured.stderr == "E\n"


@BOTH_TRANSPORTS
def test_rich_output_is_displayed_with_all_mime_types(shell: InteractiveShell) -> None:
    cell = "%%e2b\nfrom IPython.display import HTML, display\ndisplay(HTML('<b>bold</b>'))\n"
    with capture_output() as captured:
        result = run(shell, cell)
    assert result.error_in_exec is None
    assert len(captured.outputs) == 1
    assert captured.outputs[0].data["text/html"] == "<b>bold</b>"
    assert "text/plain" in captured.outputs[0].data


@BOTH_TRANSPORTS
def test_remote_error_is_raised_with_its_name_and_remote_traceback(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run(shell, "%%e2b\ndef f():\n    return 1 / 0\nf()\n")
    err = result.error_in_exec
    assert isinstance(err, E2BRemoteError) and isinstance(err, ZeroDivisionError)
    assert str(err) == "ZeroDivisionError: division by zero"
    shown = strip_ansi(capsys.readouterr().out)  # in python3's colours on execute
    assert "return 1 / 0" in shown  # the remote frame
    assert "e2b_kernel" not in shown and "loop_thread" not in shown  # none of ours


@BOTH_TRANSPORTS
def test_interrupt_stops_the_remote_cell_and_keeps_state(
    shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(shell, "%%e2b\nkept = 42").error_in_exec is None

    def interrupt(text: str) -> None:
        if "started" in text:
            os.kill(os.getpid(), signal.SIGINT)  # what a kernel interrupt delivers

    tee = _Tee(interrupt)
    monkeypatch.setattr(sys, "stdout", tee)
    cell = "%%e2b\nimport time\nprint('started', flush=True)\ntime.sleep(120)\nkept = 0\n"
    result = run(shell, cell)
    monkeypatch.undo()
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    shown = "".join(tee.parts)
    assert "keeps its state" in shown and "Traceback" not in shown
    with capture_output() as captured:
        assert run(shell, "%%e2b\nprint(kept)").error_in_exec is None
    assert captured.stdout == "42\n"


@BOTH_TRANSPORTS
def test_inputs_and_outputs_round_trip_dict_array_and_dataframe(shell: InteractiveShell) -> None:
    frame = pd.DataFrame({"n": [1, 2, 3], "s": ["a", "b", "c"]})
    shell.user_ns.update(conf={"k": [1, 2], "nested": {"x": None}}, arr=np.eye(3), frame=frame)
    cell = """\
        %%e2b -i conf -i arr -i frame -o conf2 -o arr2 -o frame2
        conf2 = dict(conf, added=True)
        arr2 = arr * 2
        frame2 = frame.assign(n2=frame.n ** 2)
        """
    result = run(shell, textwrap.dedent(cell))
    assert result.error_in_exec is None
    assert shell.user_ns["conf2"] == {"k": [1, 2], "nested": {"x": None}, "added": True}
    np.testing.assert_array_equal(shell.user_ns["arr2"], np.eye(3) * 2)
    pd.testing.assert_frame_equal(shell.user_ns["frame2"], frame.assign(n2=frame.n**2))


def test_output_errors_are_clear(shell: InteractiveShell) -> None:
    with capture_output() as captured:
        missing = run(shell, "%%e2b -o ghost\nx = 1\n41 + 1").error_in_exec
    assert "no variable named 'ghost'" in str(missing)
    # The cell itself ran: its value is shown all the same, not lost with the pull.
    assert [o.data["text/plain"] for o in captured.outputs] == ["42"]
    magics = shell._e2b_magics
    magics.transfer_limit = 1000
    big = run(shell, "%%e2b -o blob\nblob = b'x' * 5000").error_in_exec
    assert "exceeds the transfer limit" in str(big) and "-o blob" in str(big)


def test_named_sandboxes_are_kept_apart(shell: InteractiveShell) -> None:
    assert run(shell, "%%e2b --sandbox one\nwho = 'one'").error_in_exec is None
    with capture_output() as captured:
        run(shell, "%%e2b --sandbox two\nprint('who' in globals())")
    assert captured.stdout == "False\n"
    sessions = shell._e2b_magics.sessions
    assert sessions["one"].sandbox_id != sessions["two"].sandbox_id


@BOTH_TRANSPORTS
def test_env_options_reach_the_cell_as_environment_variables(shell: InteractiveShell) -> None:
    run(shell, "%e2b env PERSISTENT=yes")
    cell = "%%e2b --env 'QUOTED=it is \"here\"' --env EMPTY=\nimport os\n" + (
        "print(os.environ['PERSISTENT'], os.environ['QUOTED'], repr(os.environ['EMPTY']))"
    )
    with capture_output() as captured:
        result = run(shell, cell)
    assert result.error_in_exec is None
    assert captured.stdout == "yes it is \"here\" ''\n"


def test_bash_language_context(shell: InteractiveShell) -> None:
    with capture_output() as captured:
        result = run(shell, "%%e2b --language bash --env WHO=bash\necho hello from $WHO")
    assert result.error_in_exec is None
    assert "hello from bash" in captured.stdout


@BOTH_TRANSPORTS
def test_cell_timeout_interrupts_and_keeps_the_sandbox(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    run(shell, "%%e2b\nvalue = 'kept'")
    result = run(shell, "%%e2b --timeout 1\nimport time\ntime.sleep(60)")
    assert type(result.error_in_exec).__name__ == "ExecutionTimeout"
    # The limit came from --timeout, so the message must not send the user to the env variable.
    assert "timeout of 1 s" in str(result.error_in_exec)
    assert "E2B_KERNEL_CELL_TIMEOUT" not in str(result.error_in_exec)
    assert "Traceback" not in capsys.readouterr().out
    with capture_output() as captured:
        run(shell, "%%e2b\nprint(value)")
    assert captured.stdout == "kept\n"


def test_status_restart_timeout_kill_and_list(
    shell: InteractiveShell, running_sandbox_ids: Any
) -> None:
    run(shell, "%%e2b\nx = 1")
    sandbox_id = shell._e2b_magics.sessions["default"].sandbox_id
    with capture_output() as captured:
        run(shell, "%e2b status")
    assert sandbox_id in captured.stdout and "backend:" in captured.stdout
    with capture_output() as captured:
        run(shell, "%e2b list")
    assert sandbox_id in captured.stdout
    run(shell, "%e2b timeout 600")
    run(shell, "%e2b restart")
    with capture_output() as captured:
        run(shell, "%%e2b\nprint('x' in globals())")
    assert captured.stdout == "False\n"
    run(shell, "%e2b kill")
    assert sandbox_id not in running_sandbox_ids()


def test_connect_attaches_to_an_existing_sandbox(shell: InteractiveShell) -> None:
    run(shell, "%%e2b --sandbox first\nshared = 'from first'")
    first_id = shell._e2b_magics.sessions["first"].sandbox_id
    run(shell, f"%e2b connect {first_id} --sandbox second")
    with capture_output() as captured:
        run(shell, "%%e2b --sandbox second\nprint(shared)")
    assert captured.stdout == "from first\n"


def test_folder_upload_and_download_are_byte_for_byte(
    shell: InteractiveShell, tmp_path: Path
) -> None:
    source = tmp_path / "data"
    (source / "nested" / "deeper").mkdir(parents=True)
    (source / "empty").mkdir()
    files = {
        "a.txt": b"hello\n",
        "nested/b.bin": bytes(range(256)) * 40,
        "nested/deeper/c.csv": "x,y\n1,\u00e9\n".encode(),
        "zero": b"",
    }
    for relative, data in files.items():
        (source / relative).write_bytes(data)
    assert run(shell, f"%e2b upload {source} data").error_in_exec is None
    with capture_output() as captured:
        run(shell, "%e2b ls data")
    assert "nested/" in captured.stdout and "a.txt" in captured.stdout
    back = tmp_path / "back"
    assert run(shell, f"%e2b download data {back}").error_in_exec is None
    for relative, data in files.items():
        assert (back / relative).read_bytes() == data
    assert (back / "empty").is_dir()
    single = tmp_path / "single.txt"
    assert run(shell, f"%e2b download data/a.txt {single}").error_in_exec is None
    assert single.read_bytes() == b"hello\n"


def test_copy_destinations_mean_what_they_mean_to_cp_and_scp(
    shell: InteractiveShell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``~`` made a folder named ``~``; ``dest/`` made a file named ``dest``; a folder
    downloaded into an existing folder spilled its contents there."""
    one = tmp_path / "one.txt"
    one.write_text("one")
    folder = tmp_path / "results"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "r.txt").write_text("r")
    for command in (
        f"%e2b upload {one} ~/tilde.txt",
        f"%e2b upload {one} into/",
        f"%e2b upload {folder} into",  # an existing folder: inside it
    ):
        assert run(shell, command).error_in_exec is None, command
    with capture_output() as captured:
        run(shell, "%%e2b\nimport os\nprint(sorted(os.listdir('/home/user/into')))")
        run(shell, "%%e2b\nprint(open('/home/user/tilde.txt').read(), os.path.exists('~'))")
    assert captured.stdout == "['one.txt', 'results']\none False\n"
    local = tmp_path / "local"
    local.mkdir()
    monkeypatch.chdir(local)
    assert run(shell, "%e2b download into/results .").error_in_exec is None
    assert (local / "results" / "sub" / "r.txt").read_text() == "r"
    assert run(shell, "%e2b download ~/tilde.txt fresh/").error_in_exec is None
    assert (local / "fresh" / "tilde.txt").read_text() == "one"
    (local / "fresh" / "again.txt").mkdir()  # a folder named as the file: it goes inside
    monkeypatch.chdir(local / "fresh")
    assert run(shell, "%e2b upload ../fresh/tilde.txt ~/again.txt").error_in_exec is None
    assert run(shell, "%e2b download again.txt").error_in_exec is None
    assert (local / "fresh" / "again.txt" / "again.txt").read_text() == "one"
    err = run(shell, "%e2b ls /nonexistent").error_in_exec
    assert err is not None and type(err).__name__ == "FileNotFoundException"
    assert strip_ansi(err._render_traceback_()[0]).startswith("FileNotFoundException: ")


def test_missing_paths_give_one_line_errors(
    shell: InteractiveShell, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = run(shell, f"%e2b upload {tmp_path / 'nope'}").error_in_exec
    assert "no such local file or folder" in str(err)
    err = run(shell, "%e2b download /home/user/nope").error_in_exec
    assert "no such file or folder in the sandbox" in str(err)
    # A local file where a folder is needed: named, with what to do (was a bare FileExistsError).
    (tmp_path / "afile").write_text("in the way")
    run(shell, "%%e2b\nopen('/home/user/r.txt', 'w').write('r')")
    err = run(
        shell, f"%e2b download /home/user/r.txt {tmp_path / 'afile' / 'in.txt'}"
    ).error_in_exec
    assert f"{tmp_path / 'afile'} is a file, not a folder" in str(err), err
    assert "Give another local path" in str(err)
    assert "Traceback" not in capsys.readouterr().out


@pytest.mark.timeout(180)
def test_sandboxes_are_killed_when_python_exits(
    sdk_env: dict[str, str], running_sandbox_ids: Any, tmp_path: Path
) -> None:
    script = """\
        from IPython.core.interactiveshell import InteractiveShell
        shell = InteractiveShell.instance()
        shell.run_line_magic("load_ext", "e2b_kernel")
        shell.run_cell("%%e2b\\nx = 1")
        shell.run_cell("%%e2b --sandbox other\\nx = 2")
        for session in shell._e2b_magics.sessions.values():
            print("id", session.sandbox_id)
        """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env={**os.environ, **sdk_env},
        capture_output=True,
        text=True,
        timeout=150,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    ids = {line.split()[1] for line in done.stdout.splitlines() if line.startswith("id ")}
    assert len(ids) == 2
    assert not ids & running_sandbox_ids()
    for sandbox_id in ids:  # and it says so at exit
        assert f"[e2b] killed sandbox {sandbox_id}" in done.stdout


@BOTH_TRANSPORTS
def test_a_lost_sandbox_fails_the_cell_clearly_then_a_new_one_is_announced(
    shell: InteractiveShell, sdk_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    from e2b_code_interpreter import AsyncSandbox

    run(shell, "%%e2b\nstate = 1")
    old_id = shell._e2b_magics.sessions["default"].sandbox_id
    asyncio.run(
        AsyncSandbox.kill(old_id, api_key=sdk_env["E2B_API_KEY"], api_url=sdk_env["E2B_API_URL"])
    )
    capsys.readouterr()
    lost = run(shell, "%%e2b\nprint(state)").error_in_exec
    assert type(lost).__name__ == "SandboxLost" and "gone" in str(lost)
    shown = capsys.readouterr().out
    assert "SandboxLost" in shown and "Traceback" not in shown
    with capture_output() as captured:
        assert run(shell, "%%e2b\nprint('state' in globals())").error_in_exec is None
    assert captured.stdout == "False\n"
    assert "NEW sandbox" in captured.stderr
    assert shell._e2b_magics.sessions["default"].sandbox_id != old_id


def test_template_applies_only_when_the_sandbox_is_created(shell: InteractiveShell) -> None:
    run(shell, "%%e2b\n1")
    err = run(shell, "%%e2b --template some-other-template\n1").error_in_exec
    assert "--template applies only when a sandbox is created" in str(err)


def test_keep_leaves_the_sandbox_running_at_exit(
    shell: InteractiveShell, running_sandbox_ids: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    run(shell, "%%e2b --sandbox kept\nx = 1")
    run(shell, "%%e2b --sandbox dropped\nx = 1")
    magics = shell._e2b_magics
    kept_id = magics.sessions["kept"].sandbox_id
    dropped_id = magics.sessions["dropped"].sandbox_id
    run(shell, "%e2b keep --sandbox kept")
    magics.close_all()  # what the exit hook runs
    assert f"kept sandbox {kept_id}" in capsys.readouterr().out
    running = running_sandbox_ids()
    assert kept_id in running and dropped_id not in running
    # reattach from a fresh extension, then kill it for real
    shell.run_line_magic("reload_ext", "e2b_kernel")
    run(shell, f"%e2b connect {kept_id}")
    with capture_output() as captured:
        run(shell, "%%e2b\nprint(x)")
    assert captured.stdout == "1\n"
    run(shell, "%e2b kill")
    assert kept_id not in running_sandbox_ids()


@BOTH_TRANSPORTS
def test_each_cell_is_one_span(shell: InteractiveShell, spans: Any) -> None:
    run(shell, "%%e2b\n1")
    run(shell, "%%e2b\nraise ValueError('no')")
    finished = [dict(s.attributes or {}) for s in spans.get_finished_spans()]
    magic = [a for a in finished if a.get("e2b.front_end") == "magic"]
    assert [a["e2b.success"] for a in magic] == [True, False]
    assert magic[1]["e2b.error_name"] == "ValueError"
    assert magic[0]["e2b.sandbox_id"] == shell._e2b_magics.sessions["default"].sandbox_id


@BOTH_TRANSPORTS
def test_quiet_hides_output_but_not_errors(shell: InteractiveShell) -> None:
    with capture_output() as captured:
        result = run(shell, "%%e2b --quiet\nprint('hidden')\n'also hidden'")
    assert result.error_in_exec is None and result.result is None
    assert captured.stdout == "" and not captured.outputs
    failed = run(shell, "%%e2b -q\nraise RuntimeError('still raised')").error_in_exec
    assert isinstance(failed, E2BRemoteError) and "still raised" in str(failed)


def test_env_command_lists_and_sets(shell: InteractiveShell) -> None:
    with capture_output() as captured:
        run(shell, "%e2b env")
        run(shell, "%e2b env A=1 'B=two words'")
        run(shell, "%e2b env")
    lines = captured.stdout.splitlines()
    assert lines[0].startswith("no variables set")
    assert lines[-2:] == ["A=1", "B=two words"]


@BOTH_TRANSPORTS
def test_pulled_types_outside_plain_data_need_unsafe_pickle(shell: InteractiveShell) -> None:
    cell = "%%e2b {}-o where\nimport pathlib\nwhere = pathlib.PurePosixPath('/home/user')"
    refused = run(shell, cell.format("")).error_in_exec
    assert "refusing to load pathlib.PurePosixPath" in str(refused)
    assert "--unsafe-pickle" in str(refused)
    assert "where" not in shell.user_ns
    assert run(shell, cell.format("--unsafe-pickle ")).error_in_exec is None
    assert str(shell.user_ns["where"]) == "/home/user"


def test_pushing_a_notebook_class_instance_explains_the_fix(shell: InteractiveShell) -> None:
    run(shell, "class Point:\n    def __init__(self):\n        self.x = 1\n\npoint = Point()")
    err = run(shell, "%%e2b -i point\npoint.x").error_in_exec
    assert "-i: the sandbox failed to move the variables (AttributeError" in str(err)
    assert "define classes from this notebook in a %%e2b cell first" in str(err)


def test_status_before_the_first_cell_creates_no_sandbox(
    shell: InteractiveShell, running_sandbox_ids: Any
) -> None:
    before = running_sandbox_ids()
    with capture_output() as captured:
        assert run(shell, "%e2b status --sandbox unborn").error_in_exec is None
    assert "not started" in captured.stdout and "backend:" in captured.stdout
    assert shell._e2b_magics.sessions["unborn"].sandbox_id is None
    assert running_sandbox_ids() <= before


@BOTH_TRANSPORTS
def test_plots_arrive_as_png_images(shell: InteractiveShell) -> None:
    import base64

    cell = "%%e2b\nimport matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()\n"
    with capture_output() as captured:
        result = run(shell, cell)
    assert result.error_in_exec is None
    images = [o.data["image/png"] for o in captured.outputs if "image/png" in o.data]
    assert len(images) == 1
    assert base64.b64decode(images[0]).startswith(b"\x89PNG\r\n\x1a\n")


def test_connect_to_a_bad_id_keeps_the_current_sandbox(
    shell: InteractiveShell, running_sandbox_ids: Any
) -> None:
    run(shell, "%%e2b --sandbox typo\nkept_value = 41")
    sandbox_id = shell._e2b_magics.sessions["typo"].sandbox_id
    with capture_output() as captured:
        result = run(shell, "%e2b connect no-such-sandbox --sandbox typo")
    assert result.error_in_exec is not None
    assert "there is no sandbox no-such-sandbox (mistyped" in str(result.error_in_exec)
    assert "Traceback" not in captured.stdout + captured.stderr
    assert shell._e2b_magics.sessions["typo"].sandbox_id == sandbox_id
    assert sandbox_id in running_sandbox_ids()
    with capture_output() as captured:
        run(shell, "%%e2b --sandbox typo\nprint(kept_value + 1)")
    assert captured.stdout == "42\n"


def test_connect_to_the_current_sandbox_keeps_it(shell: InteractiveShell) -> None:
    run(shell, "%%e2b --sandbox same\nsame_value = 7")
    sandbox_id = shell._e2b_magics.sessions["same"].sandbox_id
    assert run(shell, f"%e2b connect {sandbox_id} --sandbox same").error_in_exec is None
    with capture_output() as captured:
        run(shell, "%%e2b --sandbox same\nprint(same_value)")
    assert captured.stdout == "7\n"


def test_unknown_language_names_the_fix(shell: InteractiveShell) -> None:
    with capture_output() as captured:
        result = run(shell, "%%e2b --language cobol\nDISPLAY 'HI'.")
    message = str(result.error_in_exec)
    assert "cannot run 'cobol' code" in message and "python or bash" in message
    assert "run the cell again" not in message
    assert "Traceback" not in captured.stdout + captured.stderr
