"""The jupyter transport through a real kernel process: every Jupyter message survives the relay.

The remote kernel lives in the sandbox's own Jupyter Server (port 8888), reached through the
local service's port proxy exactly as on E2B, on both backends: the private local service and
the shared one used as "cloud".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2b_code_interpreter import Sandbox
from remote_faults import LOSE_THE_NEXT_CELLS_IOPUB, UNDO_LOSING_IOPUB

from e2b_kernel.core.kernel_channels import LOST_OUTPUT_NOTE
from e2b_kernel.local import RunningService, start_subprocess

from . import sandboxes
from .conftest import BACKENDS
from .harness import Kernel, Output, clean_env

pytestmark = pytest.mark.timeout(240)

StartKernel = Callable[..., Kernel]
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJ"
    "RU5ErkJggg=="
)


@pytest.fixture(scope="module", params=BACKENDS)
def jupyter_env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., dict]]:
    """Kernel environments whose transport is the jupyter one, on the parametrized backend."""
    root = tmp_path_factory.mktemp("jupyter")

    def build(**overrides: str) -> dict[str, str]:
        env = clean_env(
            JUPYTER_RUNTIME_DIR=str(root / "runtime"),
            E2B_KERNEL_BACKEND="local",
            E2B_KERNEL_TRANSPORT="jupyter",
        )
        if request.param == "service":
            service: RunningService = request.getfixturevalue("local_service")
            env.update(service.sdk_env(), E2B_KERNEL_BACKEND="cloud")
        env.update(overrides)
        return env

    yield build


@pytest.fixture(scope="module")
def kernel(
    jupyter_env: Callable[..., dict], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Kernel]:
    """One kernel for the protocol tests of this module (each starts a sandbox otherwise)."""
    started = Kernel(tmp_path_factory.mktemp("kernel"), jupyter_env())
    try:
        yield started
    finally:
        started.close()


def of_type(outputs: list[Output], msg_type: str) -> list[dict[str, Any]]:
    return [o.content for o in outputs if o.msg_type == msg_type]


def test_banner_names_the_transport_and_the_remote_kernel(kernel: Kernel) -> None:
    info = kernel.kc.kernel_info(reply=True, timeout=60)["content"]
    assert "Transport: jupyter" in info["banner"]
    assert info["language_info"]["name"] == "python"
    assert info["language_info"]["version"].count(".") == 2  # the remote kernel's, exactly


def test_str_results_keep_their_exact_text_plain(kernel: Kernel) -> None:
    assert kernel.value("'a'") == "'a'"
    assert kernel.value('"it\'s"') == '"it\'s"'
    assert kernel.value("'''x\\ny'''") == "'x\\ny'"


def test_execution_counts_advance_by_one_per_cell(kernel: Kernel) -> None:
    counts = [kernel.run("1")[0]["execution_count"] for _ in range(3)]
    assert counts[1] == counts[0] + 1 and counts[2] == counts[1] + 1


def test_clear_output_is_relayed(kernel: Kernel) -> None:
    reply, outputs = kernel.run(
        "from IPython.display import clear_output\n"
        "for i in range(3):\n    clear_output(wait=True)\n    print(i)"
    )
    assert reply["status"] == "ok"
    assert of_type(outputs, "clear_output") == [{"wait": True}] * 3


def test_display_updates_keep_their_display_id_and_metadata(kernel: Kernel) -> None:
    reply, outputs = kernel.run(
        "from IPython.display import display, Image\n"
        "h = display('old', display_id=True)\n"
        "h.update('new')\n"
        f"png = {PNG!r}\n"
        "import base64\n"
        "display(Image(data=base64.b64decode(png), width=40))"
    )
    assert reply["status"] == "ok", outputs
    shown, image = of_type(outputs, "display_data")
    (update,) = of_type(outputs, "update_display_data")
    display_id = shown["transient"]["display_id"]
    assert update["transient"]["display_id"] == display_id
    assert shown["data"]["text/plain"] == "'old'" and update["data"]["text/plain"] == "'new'"
    assert image["metadata"] == {"image/png": {"width": 40}}


def test_input_and_getpass_go_through_stdin(kernel: Kernel) -> None:
    for code, password in (("input('name? ')", False), ("getpass.getpass('name? ')", True)):
        msg_id = kernel.send(f"import getpass\n{code}", allow_stdin=True)
        request = kernel.kc.get_stdin_msg(timeout=60)
        assert request["parent_header"]["msg_id"] == msg_id
        assert request["content"] == {"prompt": "name? ", "password": password}
        kernel.kc.input("Ada")
        reply, outputs = kernel.collect(msg_id)
        assert reply["status"] == "ok", outputs
        assert of_type(outputs, "execute_result")[0]["data"]["text/plain"] == "'Ada'"


def test_completion_and_inspection_come_from_the_live_namespace(kernel: Kernel) -> None:
    kernel.run("relay_variable_42 = {'k': 1}")
    completion = kernel.kc.complete("relay_vari", 10, reply=True, timeout=60)["content"]
    assert "relay_variable_42" in completion["matches"]
    inspection = kernel.kc.inspect("relay_variable_42", 17, reply=True, timeout=60)["content"]
    assert inspection["found"] and "dict" in inspection["data"]["text/plain"]


def test_a_widget_opens_a_comm_and_client_updates_reach_the_kernel(kernel: Kernel) -> None:
    reply, outputs = kernel.run("import ipywidgets\ns = ipywidgets.IntSlider(value=1)\ns")
    assert reply["status"] == "ok", outputs
    opens = [o for o in of_type(outputs, "comm_open") if o["target_name"] == "jupyter.widget"]
    slider = next(o for o in opens if o["data"]["state"].get("_model_name") == "IntSliderModel")
    update = {"method": "update", "state": {"value": 7}, "buffer_paths": []}
    message = kernel.kc.session.msg("comm_msg", {"comm_id": slider["comm_id"], "data": update})
    kernel.kc.shell_channel.send(message)
    assert kernel.value("s.value") == "7"


@pytest.mark.parametrize("mode", ["signal", "message"])
def test_interrupt_stops_the_remote_cell_promptly(
    mode: str, start_kernel: StartKernel, jupyter_env: Callable[..., dict]
) -> None:
    kernel = start_kernel(jupyter_env(), interrupt_mode=mode)
    msg_id = kernel.send("import time\nkept = 7\nprint('started', flush=True)\ntime.sleep(60)")
    kernel.wait_for_stream(msg_id, "started")
    started = time.monotonic()
    kernel.km.interrupt_kernel()
    reply, _ = kernel.collect(msg_id, timeout=30)
    elapsed = time.monotonic() - started
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt", reply
    assert elapsed < 8.0, f"interrupt took {elapsed:.2f} s"  # 1 s: see bench/kernel.py
    assert kernel.value("kept") == "7"


def test_interrupts_while_idle_never_reach_the_remote_kernel(
    start_kernel: StartKernel, jupyter_env: Callable[..., dict]
) -> None:
    """On python3 an idle interrupt changes nothing. Relayed, the remote SIGINT would land a
    round trip later, inside whatever request runs next, and abort it without a reply."""
    kernel = start_kernel(jupyter_env(), interrupt_mode="message")
    # Between requests ipykernel puts back ``saved_sigint_handler``: make it count, so a
    # SIGINT reaching the idle remote kernel is seen.
    kernel.run(
        "idle_sigints = []\n"
        "get_ipython().kernel.saved_sigint_handler = lambda *_: idle_sigints.append(1)"
    )
    for _ in range(3):
        # Like ipykernel, our interrupt_reply follows the interrupt: once it is here, a
        # relayed SIGINT has been sent.
        request = kernel.kc.session.msg("interrupt_request", {})
        kernel.kc.control_channel.send(request)
        reply = kernel.kc.get_control_msg(timeout=30)
        assert reply["parent_header"]["msg_id"] == request["header"]["msg_id"]
        assert reply["content"]["status"] == "ok"
    assert kernel.value("len(idle_sigints)") == "0"


def test_a_request_the_remote_kernel_never_answers_still_gets_a_reply(kernel: Kernel) -> None:
    """ipykernel sends no reply when a SIGINT lands in its handler outside the cell's code (an
    interrupt just as a cell ends): the cell must end anyway, not wait forever."""
    kernel.run(
        "_kernel = get_ipython().kernel\n"
        "_execute = _kernel.shell_handlers['execute_request']\n"
        "async def _drops_one(stream, ident, msg):\n"
        "    if msg['content']['code'] == 'dropped':\n"
        "        _kernel.shell_handlers['execute_request'] = _execute\n"
        "        raise KeyboardInterrupt\n"
        "    return await _execute(stream, ident, msg)\n"
        "_kernel.shell_handlers['execute_request'] = _drops_one"
    )
    reply, _ = kernel.run("dropped", timeout=30)
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt", reply
    assert kernel.value("'answered again'") == "'answered again'"


def _tagged_env(service: RunningService, tmp_path: Path, tag: str) -> dict[str, str]:
    """A jupyter-transport kernel on ``service`` whose sandbox carries the metadata ``tag``."""
    return clean_env(
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        E2B_KERNEL_BACKEND="cloud",
        E2B_KERNEL_TRANSPORT="jupyter",
        E2B_KERNEL_METADATA=f"test={tag}",
        **service.sdk_env(),
    )


def _the_sandbox(service: RunningService, tag: str) -> Sandbox:
    (sandbox_id,) = sandboxes.running_ids(service, tag)
    return Sandbox.connect(
        sandbox_id, api_key=service.api_key, api_url=service.url, sandbox_url=service.url
    )


def test_a_fresh_sandbox_shares_one_namespace_with_run_code(
    start_kernel: StartKernel, tmp_path: Path
) -> None:
    """Without a warm pool the default context starts behind create: the kernel must still
    use it, as on E2B, not a kernel of its own."""
    service = start_subprocess(pool_size=0)
    try:
        tag = sandboxes.new_tag()
        kernel = start_kernel(_tagged_env(service, tmp_path, tag))
        kernel.run("shared_with_run_code = 6 * 7")
        sandbox = _the_sandbox(service, tag)
        assert sandbox.run_code("shared_with_run_code").text == "42"
    finally:
        service.stop()


def _check_fresh_process(kernel: Kernel) -> None:
    """After the remote kernel's restart: fresh variables, python3's colours, and the
    history from before, as python3's sqlite history keeps it (the console's up-arrow)."""
    reply, outputs = kernel.run("variable")
    assert reply["status"] == "error" and reply["ename"] == "NameError", outputs
    assert "\x1b[" in "".join(reply["traceback"])
    asked = kernel.kc.history(hist_access_type="tail", n=50)
    reply = kernel.kc.get_shell_msg(timeout=30)
    while reply["parent_header"].get("msg_id") != asked:  # wait_for_ready's spare replies
        reply = kernel.kc.get_shell_msg(timeout=30)
    history = reply["content"]["history"]
    assert any("variable = 1" in entry[2] for entry in history), history


def test_restart_gives_fresh_state_and_keeps_files(
    start_kernel: StartKernel, jupyter_env: Callable[..., dict], tmp_path: Path
) -> None:
    kernel = start_kernel(jupyter_env())
    assert kernel.value("open('kept.txt', 'w').write('still here')\nvariable = 1\nvariable") == "1"
    kernel.km.restart_kernel(now=False)
    kernel.kc.wait_for_ready(timeout=60)
    assert kernel.value("open('kept.txt').read()") == "'still here'"
    _check_fresh_process(kernel)
    kernel.shutdown()


def test_no_message_of_the_relays_own_requests_reaches_the_front_end(
    start_kernel: StartKernel, jupyter_env: Callable[..., dict]
) -> None:
    """The relay's hidden setup request (python3's look) has its reply and its idle come over
    different sockets; the idle that came after the reply reached the front end as a lone
    `status: idle` of a request no client sent, at start and after each restart."""
    kernel = start_kernel(jupyter_env())
    sent: set[str] = set()
    foreign: list[tuple[str, object]] = []

    def run(code: str) -> None:
        msg_id = kernel.send(code)
        sent.add(msg_id)
        while True:
            msg = kernel.kc.get_iopub_msg(timeout=60)
            parent = msg["parent_header"]
            if parent.get("msg_type") == "execute_request" and parent.get("msg_id") not in sent:
                foreign.append((msg["msg_type"], msg["content"].get("execution_state")))
            if parent.get("msg_id") == msg_id and msg["content"].get("execution_state") == "idle":
                return

    for round_ in range(3):
        if round_:
            kernel.km.restart_kernel(now=False)
            kernel.kc.wait_for_ready(timeout=60)
        run("1")
        run("2")
    assert foreign == []
    kernel.shutdown()


def test_the_servers_own_kernel_info_requests_do_not_reach_the_front_end(
    start_kernel: StartKernel, jupyter_env: Callable[..., dict]
) -> None:
    """The sandbox's Jupyter Server checks each new connection to an idle kernel with
    kernel_info requests of its own session; their busy and idle reached the front end after
    every restart, and a status indicator that trusts every status flickered (python3 has no
    such server)."""
    kernel = start_kernel(jupyter_env())
    ours = kernel.kc.session.session
    kernel.run("1")
    foreign: list[tuple[str, object, object]] = []
    for _ in range(2):
        kernel.km.restart_kernel(now=False)  # no wait_for_ready: it would swallow IOPub
        for code in ("2", "3"):
            msg_id = kernel.send(code)
            while True:
                msg = kernel.kc.get_iopub_msg(timeout=60)
                parent, state = msg["parent_header"], msg["content"].get("execution_state")
                if parent and parent.get("session") != ours:
                    foreign.append((msg["msg_type"], parent.get("msg_type"), state))
                if parent.get("msg_id") == msg_id and state == "idle":
                    break
    assert foreign == []
    kernel.shutdown()


def test_a_restart_while_a_cell_runs_ends_that_cell_as_on_python3(
    start_kernel: StartKernel, jupyter_env: Callable[..., dict]
) -> None:
    """JupyterLab's restart (``jupyter_client``: an interrupt, then a shutdown request that asks
    for a restart) while a cell runs: the cell gets its KeyboardInterrupt error, its reply and
    its idle before the relay closes, as on python3 (it used to get none of them)."""
    kernel = start_kernel(jupyter_env())
    running = kernel.send("import time\nprint('started', flush=True)\ntime.sleep(60)")
    kernel.wait_for_stream(running, "started")
    kernel.km.restart_kernel(now=False)
    reply, outputs = kernel.collect(running, timeout=30)
    assert (reply["status"], reply["ename"]) == ("error", "KeyboardInterrupt"), (reply, outputs)
    errors = [o.content for o in outputs if o.msg_type == "error"]
    assert [e["ename"] for e in errors] == ["KeyboardInterrupt"], outputs
    kernel.kc.wait_for_ready(timeout=60)
    assert kernel.value("'time' in globals()") == "False"  # a fresh process
    kernel.shutdown()


def test_a_cell_that_kills_the_remote_kernel_ends_with_an_error_and_the_next_cell_runs(
    start_kernel: StartKernel, jupyter_env: Callable[..., dict]
) -> None:
    """On python3 under a Jupyter Server the cell would end with the kernel's restart; here the
    remote kernel dies and its server restarts it, so the relay must end the cell itself."""
    kernel = start_kernel(jupyter_env())
    assert kernel.value("open('kept.txt', 'w').write('x')\nvariable = 1\nvariable") == "1"
    reply, outputs = kernel.run("import os\nos._exit(1)", timeout=60)
    assert reply["status"] == "error" and reply["ename"] == "KernelDied", outputs
    assert "was restarted: its variables are gone" in reply["evalue"]
    assert [o.content["ename"] for o in outputs if o.msg_type == "error"] == ["KernelDied"]
    # The next cells run in the restarted kernel: fresh state, the same sandbox's files.
    assert kernel.value("open('kept.txt').read()") == "'x'"
    _check_fresh_process(kernel)
    kernel.shutdown()


def test_a_cell_sent_as_exit_ends_the_process_runs_once_in_the_new_one(
    start_kernel: StartKernel, jupyter_env: Callable[..., dict]
) -> None:
    """exit() ends the remote kernel's process after its reply; the server starts a new one
    and hands it the cell sent meanwhile, which runs there, as on python3 with a restarter:
    one ordinary reply, its output before its idle (the relay had answered it KernelDied,
    and then it ran all the same)."""
    kernel = start_kernel(jupyter_env())
    assert kernel.value("1") == "1"
    reply, _ = kernel.run("exit()")
    assert reply["status"] == "ok"
    # The scenario, not a wait for a condition: the user runs the next cell a second later,
    # when the process has ended but the server (which polls every few seconds) has not yet
    # said so.
    time.sleep(1.0)
    queued = kernel.send("open('side.txt', 'a').write('A')\nprint('ran')")
    reply, outputs = kernel.collect(queued, timeout=120)
    assert reply["status"] == "ok", (reply, outputs)
    # Held from exit()'s reply until the new process's IOPub reaches the relay: were it sent
    # at once, the new process could run it before the server listened (seen under load),
    # and its output would be lost.
    shown = [o.content.get("text") for o in outputs if o.msg_type == "stream"]
    assert shown == ["ran\n"], outputs
    assert kernel.value("open('side.txt').read()") == "'A'"  # it ran once


def test_a_message_larger_than_the_server_takes_fails_alone(kernel: Kernel) -> None:
    """The sandbox's Jupyter Server closes the socket on a message over 10 MiB (Tornado's
    limit): the message was lost, and a cell running meanwhile with it ("run the cell again").
    Now such a request fails at once, saying why and what to do, and nothing else is lost."""
    assert kernel.value("kept = 'still here'\nkept") == "'still here'"
    running = kernel.send("import time\ntime.sleep(3)\nprint('finished')")
    big = kernel.send("x = '" + "a" * (11 * 1024 * 1024) + "'\nlen(x)")
    reply, outputs = kernel.collect(big, timeout=60)
    assert reply["status"] == "error" and reply["ename"] == "MessageTooLarge", reply
    assert "takes at most 10 MiB" in reply["evalue"] and "as a file" in reply["evalue"]
    reply, outputs = kernel.collect(running, timeout=60)
    assert reply["status"] == "ok", (reply, outputs)
    assert [o.content["text"] for o in outputs if o.msg_type == "stream"] == ["finished\n"]
    assert kernel.value("kept") == "'still here'"


def test_a_cell_whose_iopub_messages_are_lost_still_ends(kernel: Kernel) -> None:
    """Its reply comes, its 'busy', output and 'idle' never do: a front end that waits for
    the 'idle' (jupyter_client, nbclient, nbval) waited for ever. Now the relay learns from
    a later request's status that they cannot come, and ends the cell with a note."""
    assert kernel.value(LOSE_THE_NEXT_CELLS_IOPUB + "\n1") == "1"
    try:
        reply, outputs = kernel.run("print('ran')\n6 * 7", timeout=60)
        assert reply["status"] == "ok", (reply, outputs)
        assert [(o.msg_type, o.content.get("text")) for o in outputs] == [
            ("stream", LOST_OUTPUT_NOTE)
        ]
        assert kernel.value("6 * 7") == "42"  # later cells show their output again
    finally:
        kernel.run(UNDO_LOSING_IOPUB)


def test_a_restart_by_another_client_of_the_server_ends_the_cell_and_the_next_cells_run(
    start_kernel: StartKernel, local_service: RunningService, tmp_path: Path
) -> None:
    """Another client of port 8888 (JupyterLab, a script) restarts the remote kernel through
    the server's REST API: the running cell ends with an error saying so, and cells sent right
    after the restart run and end (their IOPub messages are not lost to the new process's
    subscription, which starts afresh)."""
    tag = sandboxes.new_tag()
    kernel = start_kernel(_tagged_env(local_service, tmp_path, tag))
    assert kernel.value("variable = 1\nvariable") == "1"
    sandbox = _the_sandbox(local_service, tag)
    headers = {"E2b-Sandbox-Id": sandbox.sandbox_id, "E2b-Sandbox-Port": "8888"}
    headers["E2B-Traffic-Access-Token"] = str(sandbox.traffic_access_token)
    (kernel_id,) = [c.id for c in sandbox.list_code_contexts() if c.language == "python"]
    restart = f"{local_service.url}/api/kernels/{kernel_id}/restart"

    running = kernel.send("import time\nprint('started', flush=True)\ntime.sleep(60)")
    kernel.wait_for_stream(running, "started")
    assert httpx.post(restart, headers=headers, timeout=60).status_code == 200
    # The server interrupts a busy kernel before it restarts it: the cell ends, as under
    # python3 with a Jupyter Server, with the KeyboardInterrupt (or, if the process ends
    # first, with our error saying why).
    reply, outputs = kernel.collect(running, timeout=30)
    assert reply["status"] == "error", (reply, outputs)
    assert reply["ename"] in ("KeyboardInterrupt", "KernelDied"), reply
    assert kernel.value("'variable' in globals()", timeout=30) == "False"

    # Idle this time, and the next cell sent the moment the restart returns.
    assert httpx.post(restart, headers=headers, timeout=60).status_code == 200
    assert kernel.value("6 * 7", timeout=30) == "42"
    kernel.shutdown()


def test_auto_chooses_jupyter_when_the_server_answers(
    start_kernel: StartKernel, jupyter_env: Callable[..., dict]
) -> None:
    kernel = start_kernel(jupyter_env(E2B_KERNEL_TRANSPORT="auto"))
    assert "Transport: jupyter (auto: the sandbox's Jupyter Server answers" in kernel.banner()


def test_auto_falls_back_to_execute_and_str_results_keep_their_quotes_there(
    start_kernel: StartKernel, tmp_path: Path
) -> None:
    # Without isolation the local service starts no Jupyter Server in the sandbox (it would
    # take the host's port 8888): port 8888 answers E2B's "port is not open", as on E2B for a
    # template that serves no Jupyter.
    env = clean_env(
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        E2B_KERNEL_BACKEND="local",
        E2B_KERNEL_LOCAL_ISOLATION="none",
        E2B_KERNEL_TRANSPORT="auto",
    )
    kernel = start_kernel(env)
    banner = kernel.banner()
    assert "Transport: execute (auto: the sandbox's Jupyter Server does not answer" in banner
    assert "port is not open" in banner
    assert kernel.value("'a'") == "'a'"
    assert kernel.value('"it\'s"') == '"it\'s"'
    _, outputs = kernel.run("from IPython.display import display\ndisplay('shown')")
    assert of_type(outputs, "display_data")[0]["data"] == {"text/plain": "'shown'"}


def test_connect_request_names_the_ports_of_this_kernel(
    start_kernel: StartKernel, jupyter_env: Callable[..., dict]
) -> None:
    """As python3's: the ports of the kernel the front end is connected to (relayed, it named
    the sandbox kernel's ipc socket numbers, 1 to 5)."""
    kernel = start_kernel(jupyter_env())
    request = kernel.kc.session.msg("connect_request", {})
    kernel.kc.shell_channel.send(request)
    reply = kernel.reply(request["header"]["msg_id"], timeout=60)
    info = kernel.km.get_connection_info()
    for channel in ("shell", "iopub", "stdin", "hb"):
        assert reply[f"{channel}_port"] == info[f"{channel}_port"], (channel, reply, info)


def test_kernel_info_is_answered_while_the_jupyter_server_cannot_be_reached(
    start_kernel: StartKernel, tmp_path: Path
) -> None:
    """Forced onto a Jupyter Server that does not answer, the kernel still answers
    kernel_info (locally, its banner saying why), every time, and a cell gets the error: a
    front end's wait_for_ready must not hang (it did once: the relay remembered the request's
    signature before handing it to ipykernel, which then refused it as a replay)."""
    env = clean_env(
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        E2B_KERNEL_BACKEND="local",
        E2B_KERNEL_TRANSPORT="jupyter",
        E2B_KERNEL_JUPYTER_URL="http://127.0.0.1:9/",  # nothing listens on port 9
    )
    kernel = start_kernel(env)  # waits for a kernel_info reply
    reply, _ = kernel.run("print(1)", timeout=120)
    assert reply["status"] == "error", reply
    for _ in range(2):
        banner = kernel.banner()
        assert "the sandbox's Jupyter Server does not answer" in banner, banner
