"""The code-interpreter plane on the wire (spec 3.1/3.2): exact lines, errors, keepalive, races."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import pytest
from e2b import TimeoutException
from e2b_code_interpreter import Sandbox
from local_helpers import sandbox_headers, sdk_options

from e2b_kernel.local import RunningService


class Plane:
    """Raw HTTP client for one sandbox's port-49999 plane."""

    def __init__(self, service: RunningService, sandbox: Sandbox) -> None:
        headers = sandbox_headers(sandbox, 49999)
        self.client = httpx.Client(base_url=service.url, headers=headers, timeout=120)

    def execute(self, code: str, **fields: object) -> tuple[bytes, list[dict]]:
        body = {"code": code, "context_id": None, "language": None, "env_vars": None, **fields}
        with self.client.stream("POST", "/execute", json=body) as response:
            assert response.status_code == 200, response.read()
            raw = response.read()
        return raw, [json.loads(line) for line in raw.decode().split("\n") if line]


@pytest.fixture(scope="module")
def plane(local_service: RunningService) -> Iterator[Plane]:
    sbx = Sandbox.create(timeout=600, **sdk_options(local_service))
    wire = Plane(local_service, sbx)
    try:
        yield wire
    finally:
        wire.client.close()
        sbx.kill()


def test_lines_are_json_dumps_with_newlines_and_no_blank_line(plane: Plane) -> None:
    raw, lines = plane.execute("print('hi')\n1 + 1")
    assert raw.endswith(b"\n") and b"\n\n" not in raw
    assert raw.split(b"\n")[0] == b'{"type": "number_of_executions", "execution_count": 1}'
    assert [line["type"] for line in lines] == [
        "number_of_executions",
        "stdout",
        "result",
        "end_of_execution",
    ]
    assert lines[2] == {"type": "result", "text": "2", "extra": {}, "is_main_result": True}
    assert lines[1]["text"] == "hi\n" and "T" in lines[1]["timestamp"]


def test_only_the_first_error_is_written_and_dropped_messages_stay_dropped(plane: Plane) -> None:
    code = (
        "from IPython.display import clear_output, display\n"
        "h = display('a', display_id=True)\n"
        "h.update('b')\n"
        "clear_output()\n"
        "raise KeyError('k')"
    )
    _, lines = plane.execute(code)
    assert [line["type"] for line in lines] == [
        "number_of_executions",
        "result",
        "error",
        "end_of_execution",
    ]
    assert lines[1]["text"] == "a" and lines[1]["is_main_result"] is False
    assert (lines[2]["name"], lines[2]["value"]) == ("KeyError", "'k'")
    assert isinstance(lines[2]["traceback"], str)


@pytest.mark.timeout(60)
def test_keepalive_after_five_seconds_of_silence(plane: Plane) -> None:
    _, lines = plane.execute("import time; time.sleep(6); print('done')")
    types = [line["type"] for line in lines]
    assert types == ["number_of_executions", "keepalive", "stdout", "end_of_execution"]


def test_error_replies_are_plain_text(plane: Plane) -> None:
    both = {"code": "1", "context_id": "x", "language": "python", "env_vars": None}
    reply = plane.client.post("/execute", json=both)
    assert (reply.status_code, reply.text) == (
        400,
        "Only one of context_id or language can be provided",
    )
    assert reply.headers["content-type"].startswith("text/plain")
    missing = {"code": "1", "context_id": "nope", "language": None, "env_vars": None}
    reply = plane.client.post("/execute", json=missing)
    assert (reply.status_code, reply.text) == (404, "Context nope not found")
    reply = plane.client.delete("/contexts/nope")
    assert (reply.status_code, reply.text) == (404, "Context nope not found")
    reply = plane.client.post("/execute", content=b"{not json")
    assert reply.status_code == 422 and "not valid JSON" in reply.text
    reply = plane.client.post("/execute", json={"code": 5})
    assert reply.status_code == 422 and "'code'" in reply.text
    assert plane.client.get("/health").json() == "OK"
    assert plane.client.get("/nothing-here").status_code == 404


def test_contexts_are_listed_in_creation_order(plane: Plane) -> None:
    created = [plane.client.post("/contexts", json={}).json() for _ in range(2)]
    listed = plane.client.get("/contexts").json()
    assert listed[0]["language"] == "python" and listed[0]["cwd"] == "/home/user"
    assert [c["id"] for c in listed[-2:]] == [c["id"] for c in created]
    for context in created:
        reply = plane.client.delete(f"/contexts/{context['id']}")
        assert (reply.status_code, reply.json()) == (200, None)


@pytest.mark.timeout(120)
def test_restart_during_an_execution_ends_it_with_context_restarting(plane: Plane) -> None:
    context = plane.client.post("/contexts", json={}).json()
    running = threading.Event()
    lines: list[dict] = []

    def run() -> None:
        code = "import time\nprint('running', flush=True)\ntime.sleep(60)"
        body = {"code": code, "context_id": context["id"], "language": None, "env_vars": None}
        with plane.client.stream("POST", "/execute", json=body) as response:
            for line in response.iter_lines():
                lines.append(json.loads(line))
                if lines[-1].get("text") == "running\n":
                    running.set()
        running.set()

    runner = threading.Thread(target=run)
    runner.start()
    assert running.wait(60)
    reply = plane.client.post(f"/contexts/{context['id']}/restart")
    assert (reply.status_code, reply.json()) == (200, None)
    runner.join(60)
    assert not runner.is_alive()
    errors = [line for line in lines if line["type"] == "error"]
    assert [(e["name"], e["value"]) for e in errors] == [
        ("ContextRestarting", "Context was restarted")
    ]
    _, after = plane.execute("'fresh'", context_id=context["id"])
    assert [line.get("text") for line in after if line["type"] == "result"] == ["fresh"]
    plane.client.delete(f"/contexts/{context['id']}")


@pytest.mark.timeout(120)
def test_bash_cell_is_interrupted_by_disconnect(local_service: RunningService) -> None:
    sbx = Sandbox.create(**sdk_options(local_service))
    try:
        sbx.run_code("KEPT=yes", language="bash")
        with pytest.raises(TimeoutException):
            sbx.run_code("sleep 300", language="bash", timeout=3)
        after = sbx.run_code("echo $KEPT", language="bash", timeout=30)
        assert after.logs.stdout == ["yes\n"]
    finally:
        sbx.kill()


@pytest.mark.timeout(120)
def test_deleting_a_busy_context_ends_its_running_and_queued_cells(plane: Plane) -> None:
    context = plane.client.post("/contexts", json={}).json()
    body = {"code": "", "context_id": context["id"], "language": None, "env_vars": None}
    running, queued = threading.Event(), threading.Event()
    outcomes: dict[str, list[dict]] = {}

    def run(name: str, code: str, signal: threading.Event, signal_on: str) -> None:
        lines: list[dict] = []
        with plane.client.stream("POST", "/execute", json={**body, "code": code}) as response:
            if signal_on == "headers":  # headers come before the context's lock is taken
                signal.set()
            for line in response.iter_lines():
                lines.append(json.loads(line))
                if signal_on == "output" and lines[-1].get("text") == "running\n":
                    signal.set()
        outcomes[name] = lines
        signal.set()

    first = threading.Thread(
        target=run,
        args=(
            "first",
            "import time\nprint('running', flush=True)\ntime.sleep(60)",
            running,
            "output",
        ),
    )
    first.start()
    assert running.wait(60)
    second = threading.Thread(target=run, args=("second", "'never'", queued, "headers"))
    second.start()
    assert queued.wait(60)
    reply = plane.client.delete(f"/contexts/{context['id']}")
    assert (reply.status_code, reply.json()) == (200, None)
    first.join(60)
    second.join(60)
    assert [line["name"] for line in outcomes["first"] if line["type"] == "error"] == [
        "ContextRestarting"
    ]
    assert [line["type"] for line in outcomes["second"]] == ["error", "end_of_execution"]
    assert outcomes["second"][0]["name"] == "UnexpectedEndOfExecution"


def test_language_names_are_normalized_to_the_default_contexts(plane: Plane) -> None:
    plane.execute("marker = 'default python'")
    _, lines = plane.execute("marker", language=" Python ")
    assert [line.get("text") for line in lines if line["type"] == "result"] == ["default python"]
    _, lines = plane.execute("echo $SHELL_VAR", language="BASH", env_vars={"SHELL_VAR": "set"})
    assert [line["text"] for line in lines if line["type"] == "stdout"] == ["set\n"]
    _, lines = plane.execute("echo ${SHELL_VAR:-restored}", language="bash")
    assert [line["text"] for line in lines if line["type"] == "stdout"] == ["restored\n"]
    bash = [c for c in plane.client.get("/contexts").json() if c["language"] == "bash"]
    assert len(bash) == 1  # created lazily once, then remembered
