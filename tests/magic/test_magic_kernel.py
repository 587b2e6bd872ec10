"""`%load_ext e2b_kernel` inside a real python3 (ipykernel) kernel driven by jupyter_client."""

from __future__ import annotations

import ast
import os
import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from e2b_kernel.core.outputs import strip_ansi

TIMEOUT = 90


@pytest.fixture
def kernel(sdk_env: dict[str, str]) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    """A python3 kernel with the extension loaded, pointed at the local service."""
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env={**os.environ, **sdk_env})
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        reply, _ = execute(kc, "%load_ext e2b_kernel")
        assert reply["content"]["status"] == "ok"
        yield km, kc
    finally:
        kc.stop_channels()
        if km.is_alive():
            km.shutdown_kernel(now=True)


def execute(
    kc: BlockingKernelClient, code: str, on_message: Callable[[dict], None] | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run ``code``; return the reply and this request's IOPub outputs in arrival order."""
    outputs: list[dict[str, Any]] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] in ("stream", "display_data", "execute_result", "error"):
            outputs.append(msg)
        if on_message is not None:
            on_message(msg)

    reply = kc.execute_interactive(code, output_hook=hook, timeout=TIMEOUT)
    return reply, outputs


def stdout_of(outputs: list[dict[str, Any]]) -> str:
    return "".join(
        m["content"]["text"]
        for m in outputs
        if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"
    )


def test_streams_in_order_with_rich_output_and_result(kernel: Any) -> None:
    _, kc = kernel
    cell = """%%e2b
import sys
from IPython.display import HTML, display
print("one", flush=True)
print("two", file=sys.stderr, flush=True)
display(HTML("<i>rich</i>"))
print("three", flush=True)
6 * 7
"""
    reply, outputs = execute(kc, cell)
    assert reply["content"]["status"] == "ok"
    seen = []
    for msg in outputs:
        content = msg["content"]
        if msg["msg_type"] == "stream":
            seen.extend((content["name"], line) for line in content["text"].splitlines())
        elif msg["msg_type"] == "display_data":
            seen.append(("display", content["data"]["text/html"]))
        else:
            seen.append((msg["msg_type"], content["data"]["text/plain"]))
    assert seen == [
        ("stdout", "one"),
        ("stderr", "two"),
        ("display", "<i>rich</i>"),
        ("stdout", "three"),
        ("execute_result", "42"),
    ]


def test_remote_error_reaches_the_frontend_with_its_name(kernel: Any) -> None:
    _, kc = kernel
    reply, outputs = execute(kc, "%%e2b\ndef explode():\n    raise KeyError('missing')\nexplode()")
    content = reply["content"]
    assert content["status"] == "error"
    assert content["ename"] == "E2BRemoteError"
    assert content["evalue"] == "KeyError: 'missing'"
    [error] = [m for m in outputs if m["msg_type"] == "error"]
    text = strip_ansi("\n".join(error["content"]["traceback"]))  # in python3's colours
    assert "explode()" in text and "raise KeyError" in text
    assert "e2b_kernel" not in text and "site-packages" not in text


@pytest.mark.parametrize(
    ("cell", "shown"),
    [
        ("x = (", "SyntaxError: incomplete input"),
        ("if True:\nx = 1", "IndentationError: expected an indented block"),
        ("eval('1+')", "SyntaxError: invalid syntax"),  # at run time, with its frames
    ],
)
def test_a_remote_syntax_error_shows_the_sandboxs_traceback(
    kernel: Any, cell: str, shown: str
) -> None:
    """IPython shows SyntaxErrors its own way, from where they were raised: ours were, so the
    magic's own stack came instead of the sandbox's traceback (the most common cell error)."""
    _, kc = kernel
    reply, outputs = execute(kc, f"%%e2b\n{cell}")
    assert reply["content"]["ename"] == "E2BRemoteError"
    [error] = [m for m in outputs if m["msg_type"] == "error"]
    text = strip_ansi("\n".join(error["content"]["traceback"]))
    assert shown in text and cell.splitlines()[-1] in text, text
    assert "e2b_kernel" not in text and "run_cell_magic" not in text, text


def test_help_and_load_reach_the_front_end_as_on_python3(kernel: Any) -> None:
    """``obj?`` and ``%load`` answer with reply payloads, which the magic dropped: nothing
    was shown. ``%load``'s text comes back as a cell for the sandbox."""
    _, kc = kernel
    reply, _ = execute(kc, "%%e2b\nlen?")
    [page] = [p for p in reply["content"]["payload"] if p["source"] == "page"]
    assert "Return the number of items" in strip_ansi(page["data"]["text/plain"])
    execute(kc, "%%e2b\nopen('/tmp/loadme.py', 'w').write('print(42)\\n')")
    reply, _ = execute(kc, "%%e2b --sandbox default\n%load /tmp/loadme.py")
    [next_input] = [p for p in reply["content"]["payload"] if p["source"] == "set_next_input"]
    assert next_input["text"].startswith("%%e2b --sandbox default\n# %load /tmp/loadme.py\n")
    assert "print(42)" in next_input["text"]


def test_kernel_interrupt_stops_the_remote_cell_and_keeps_state(kernel: Any) -> None:
    km, kc = kernel
    assert execute(kc, "%%e2b\nkept = 'still here'")[0]["content"]["status"] == "ok"
    msg_id = kc.execute("%%e2b\nimport time\nprint('started', flush=True)\ntime.sleep(300)")
    deadline = time.monotonic() + TIMEOUT
    interrupted = False
    error = None
    while time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=1)
        except queue.Empty:
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream" and "started" in msg["content"]["text"] and not interrupted:
            km.interrupt_kernel()
            interrupted = True
        elif msg["msg_type"] == "error":
            error = msg["content"]
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    assert interrupted
    assert error is not None and error["ename"] == "KeyboardInterrupt"
    assert kc.get_shell_msg(timeout=TIMEOUT)["content"]["status"] == "error"
    reply, outputs = execute(kc, "%%e2b\nprint(kept)")
    assert reply["content"]["status"] == "ok"
    assert stdout_of(outputs) == "still here\n"


def test_inputs_and_outputs_round_trip_in_the_kernel(kernel: Any) -> None:
    _, kc = kernel
    setup = (
        "import numpy as np, pandas as pd\n"
        "conf = {'a': 1, 'b': [1, 2]}\n"
        "arr = np.arange(10).reshape(2, 5)\n"
        "frame = pd.DataFrame({'x': [1.5, 2.5], 'y': ['p', 'q']})\n"
    )
    assert execute(kc, setup)[0]["content"]["status"] == "ok"
    cell = (
        "%%e2b -i conf -i arr -i frame -o conf2 -o arr2 -o frame2\n"
        "conf2 = {**conf, 'c': 3}\narr2 = arr.T\nframe2 = frame[frame.x > 2]\n"
    )
    assert execute(kc, cell)[0]["content"]["status"] == "ok"
    check = (
        "print(conf2 == {'a': 1, 'b': [1, 2], 'c': 3}, (arr2 == arr.T).all(),\n"
        "      frame2.equals(frame[frame.x > 2]))"
    )
    _, outputs = execute(kc, check)
    assert stdout_of(outputs) == "True True True\n"


def test_sandboxes_are_killed_when_the_kernel_shuts_down(
    kernel: Any, running_sandbox_ids: Callable[[], set[str]]
) -> None:
    km, kc = kernel
    execute(kc, "%%e2b\nx = 1")
    execute(kc, "%%e2b --sandbox second\nx = 2")
    _, outputs = execute(
        kc, "print([s.sandbox_id for s in get_ipython()._e2b_magics.sessions.values()])"
    )
    ids = set(ast.literal_eval(stdout_of(outputs)))
    assert len(ids) == 2 and ids <= running_sandbox_ids()
    km.shutdown_kernel(now=False)  # polite: the kernel process exits and runs atexit
    assert not ids & running_sandbox_ids()


def test_bad_arguments_are_usage_errors_in_the_kernel(kernel: Any) -> None:
    _, kc = kernel
    for source, message in [
        ("%%e2b --nope\n1", "unrecognized arguments: --nope"),
        ("%e2b timeout soon", "invalid int value: 'soon'"),
    ]:
        reply, outputs = execute(kc, source)
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "UsageError"
        assert message in reply["content"]["evalue"]
        # IPython shows a usage error as one stderr line, not a traceback
        shown = "".join(m["content"].get("text", "") for m in outputs)
        assert "UsageError" in shown and message in shown
        assert "Traceback" not in shown


def test_named_sandboxes_are_kept_apart_in_the_kernel(kernel: Any) -> None:
    _, kc = kernel
    execute(kc, "%%e2b --sandbox left\nside = 'left'")
    execute(kc, "%%e2b --sandbox right\nside = 'right'")
    _, left = execute(kc, "%%e2b --sandbox left\nprint(side)")
    _, right = execute(kc, "%%e2b --sandbox right\nprint(side)")
    _, default = execute(kc, "%%e2b\nprint('side' in globals())")
    assert (stdout_of(left), stdout_of(right), stdout_of(default)) == (
        "left\n",
        "right\n",
        "False\n",
    )


def test_folder_round_trip_in_the_kernel(kernel: Any, tmp_path: Path) -> None:
    _, kc = kernel
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    payload = {"top.txt": b"top\n", "sub/blob.bin": os.urandom(100_000), "sub/empty": b""}
    for relative, data in payload.items():
        (source / relative).write_bytes(data)
    back = tmp_path / "back"
    for line in (f"%e2b upload '{source}' copied", f"%e2b download copied '{back}'"):
        reply, _ = execute(kc, line)
        assert reply["content"]["status"] == "ok", reply["content"]
    for relative, data in payload.items():
        assert (back / relative).read_bytes() == data
