"""``SandboxExecutor`` against the local service: the result contract, state, timeouts, env vars,
cleanup and OpenTelemetry spans."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from e2b_kernel import SandboxExecutor

CONTRACT = {
    "output": str,
    "error": (str, type(None)),
    "execution_time": float,
    "success": bool,
    "logs": list,
    "sandbox_id": str,
}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_result_has_exactly_the_contract_fields(sdk_env: dict[str, str]) -> None:
    async def scenario() -> tuple[dict, dict, list]:
        async with SandboxExecutor(default_timeout=30) as ex:
            ok = await ex.execute(
                {"code": "import sys\nprint('out')\nprint('err', file=sys.stderr)"}
            )
            rich = await ex.execute(
                {
                    "code": "from IPython.display import HTML, display\n"
                    "display(HTML('<p>x</p>'))\n21 * 2"
                }
            )
            return ok, rich, ex.last_results

    ok, rich, results = run(scenario())
    for result in (ok, rich):
        assert set(result) == set(CONTRACT)
        for key, kind in CONTRACT.items():
            assert isinstance(result[key], kind), key
    assert ok["output"] == "out\n"
    assert ok["success"] is True and ok["error"] is None
    assert ok["logs"] == ["[stdout] out", "[stderr] err"]
    assert ok["execution_time"] >= 0 and ok["sandbox_id"]
    assert [r["type"] for r in results] == ["display_data", "execute_result"]
    assert results[0]["data"]["text/html"] == "<p>x</p>"
    assert results[1]["data"]["text/plain"] == "42"


def test_failure_carries_name_value_and_traceback_and_state_persists(
    sdk_env: dict[str, str],
) -> None:
    async def scenario() -> tuple[dict, dict]:
        async with SandboxExecutor() as ex:
            await ex.execute({"code": "counter = 41"})
            failed = await ex.execute({"code": "def broken():\n    return {}['nope']\nbroken()"})
            after = await ex.execute({"code": "print(counter + 1)"})
            return failed, after

    failed, after = run(scenario())
    assert failed["success"] is False
    error = failed["error"]
    assert error is not None
    assert error.splitlines()[0] == "KeyError: 'nope'"
    assert "return {}['nope']" in error and "broken()" in error
    assert "\x1b[" not in error  # plain text, ready for a prompt
    assert after["success"] is True and after["output"] == "42\n"


def test_timeout_is_a_failed_result_and_keeps_the_sandbox(sdk_env: dict[str, str]) -> None:
    async def scenario() -> tuple[dict, dict]:
        async with SandboxExecutor(default_timeout=60) as ex:
            await ex.execute({"code": "before = 'kept'"})
            slow = await ex.execute({"code": "import time\ntime.sleep(120)", "timeout": 1})
            after = await ex.execute({"code": "print(before)"})
            return slow, after

    slow, after = run(scenario())
    assert slow["success"] is False
    assert slow["error"] is not None and slow["error"].startswith("TimeoutError:")
    assert after["success"] is True and after["output"] == "kept\n"


def test_env_vars_arrive_intact_and_only_for_that_execution(sdk_env: dict[str, str]) -> None:
    tricky = {
        "QUOTES": 'it\'s "quoted" and `ticked`',
        "NEWLINES": "line one\nline two\n",
        "CODE_LIKE": "'; import os; os._exit(1); '",
        "UNICODE": "caf\u00e9 \u2603",
    }

    async def scenario() -> tuple[dict, dict]:
        async with SandboxExecutor() as ex:
            names = sorted(tricky)
            code = f"import os, json\nprint(json.dumps({{k: os.environ[k] for k in {names!r}}}))"
            seen = await ex.execute({"code": code, "env_vars": tricky})
            later = await ex.execute({"code": "import os\nprint(os.environ.get('QUOTES'))"})
            return seen, later

    seen, later = run(scenario())
    assert seen["success"], seen["error"]
    assert json.loads(seen["output"]) == tricky
    assert later["output"] == "None\n"


def test_env_vars_are_put_back_after_a_timeout_and_overrides_restore_what_was_there(
    sdk_env: dict[str, str],
) -> None:
    """A call cut by its timeout left its env vars (a secret) to every later call, and a call
    that overrode a variable (PATH, HOME) deleted it for every later call. As E2B's template:
    each goes back to what it was, unless the code itself changed it."""
    show = "import os\nprint([os.environ.get(k) for k in ('SECRET_TOKEN', 'HOME', 'MINE')])"

    async def scenario() -> list[dict]:
        async with SandboxExecutor(default_timeout=60) as ex:
            before = await ex.execute({"code": show})
            slow = {"SECRET_TOKEN": "abc123", "HOME": "/tmp"}
            cut = await ex.execute(
                {"code": "import time\ntime.sleep(120)", "env_vars": slow, "timeout": 1}
            )
            after_cut = await ex.execute({"code": show})
            own = "import os\nos.environ['MINE'] = 'code'"
            await ex.execute({"code": own, "env_vars": {"MINE": "call", "HOME": "/srv"}})
            after_own = await ex.execute({"code": show})
            return [before, cut, after_cut, after_own]

    before, cut, after_cut, after_own = run(scenario())
    assert before["output"] == "[None, '/home/user', None]\n"
    assert cut["success"] is False
    assert after_cut["output"] == before["output"]
    assert after_own["output"] == "[None, '/home/user', 'code']\n"  # the code's own value stays


def test_context_manager_kills_the_sandbox(
    sdk_env: dict[str, str], running_sandbox_ids: Callable[[], set[str]]
) -> None:
    async def scenario() -> str:
        async with SandboxExecutor() as ex:
            result = await ex.execute({"code": "1"})
            assert result["sandbox_id"] in await asyncio.to_thread(running_sandbox_ids)
            return result["sandbox_id"]

    sandbox_id = run(scenario())
    assert sandbox_id not in running_sandbox_ids()


def test_context_manager_cleans_up_when_the_body_raises(
    sdk_env: dict[str, str], running_sandbox_ids: Callable[[], set[str]]
) -> None:
    seen: list[str] = []

    async def scenario() -> None:
        async with SandboxExecutor() as ex:
            seen.append((await ex.execute({"code": "1"}))["sandbox_id"])
            raise RuntimeError("caller failed")

    with pytest.raises(RuntimeError, match="caller failed"):
        run(scenario())
    assert seen and seen[0] not in running_sandbox_ids()


def test_each_execution_is_one_span(sdk_env: dict[str, str], spans: InMemorySpanExporter) -> None:
    async def scenario() -> tuple[dict, dict]:
        async with SandboxExecutor() as ex:
            return await ex.execute({"code": "1"}), await ex.execute({"code": "1/0"})

    ok, _ = run(scenario())
    finished = [s for s in spans.get_finished_spans() if s.name == "e2b.execute"]
    assert len(finished) == 2
    first, second = (dict(s.attributes or {}) for s in finished)
    assert first["e2b.sandbox_id"] == ok["sandbox_id"]
    assert first["e2b.success"] is True and "e2b.error_name" not in first
    assert isinstance(first["e2b.duration_s"], float)
    assert second["e2b.success"] is False
    assert second["e2b.error_name"] == "ZeroDivisionError"
    assert first["e2b.front_end"] == "executor"


@pytest.mark.parametrize(
    ("request_", "error", "message"),
    [
        ({}, ValueError, "is missing: it must be a string of source code"),
        ({"code": 1}, ValueError, "must be a string of source code, got 1"),
        ({"code": "1", "timeout": -1}, ValueError, "positive number"),
        ({"code": "1", "env_vars": {"E2B_KERNEL_LOCAL_API_KEY": "x"}}, ValueError, "may not"),
        ({"code": "1", "cmd": "x"}, ValueError, "unknown request keys"),
        ({"code": "1", "timeout": -5}, ValueError, "positive number"),
        ({"code": "1", "timeout": "soon"}, TypeError, "number of seconds"),
        ({"code": "1", "env_vars": {"A": 1}}, ValueError, "str names to str values"),
        ({"code": "1", "env_vars": {"E2B_API_KEY": "x"}}, ValueError, "may not be sent"),
        ("print(1)", TypeError, "takes a dict"),
    ],
)
def test_bad_requests_fail_before_touching_a_sandbox(
    request_: Any, error: type[Exception], message: str
) -> None:
    ex = SandboxExecutor()
    with pytest.raises(error, match=message):
        run(ex.execute(request_))
    assert ex.sandbox_id is None


def test_default_timeout_is_validated() -> None:
    with pytest.raises(ValueError, match="positive"):
        SandboxExecutor(default_timeout=0)


def test_a_lost_sandbox_is_a_clear_error_and_the_next_call_says_it_is_new(
    sdk_env: dict[str, str],
) -> None:
    from e2b_code_interpreter import AsyncSandbox

    from e2b_kernel import SandboxLost

    async def scenario() -> tuple[str, dict]:
        async with SandboxExecutor() as ex:
            first = await ex.execute({"code": "state = 1"})
            await AsyncSandbox.kill(
                first["sandbox_id"], api_key=sdk_env["E2B_API_KEY"], api_url=sdk_env["E2B_API_URL"]
            )
            with pytest.raises(SandboxLost) as lost:
                await ex.execute({"code": "print(state)"})
            fresh = await ex.execute({"code": "print('state' in globals())"})
            return str(lost.value), {**fresh, "first": first["sandbox_id"]}

    message, fresh = run(scenario())
    assert "state" in message and "gone" in message
    assert fresh["output"] == "False\n"
    assert fresh["sandbox_id"] != fresh["first"]
    assert any("NEW sandbox" in line for line in fresh["logs"])  # never silent


def test_other_languages_and_use_without_the_context_manager(sdk_env: dict[str, str]) -> None:
    async def scenario() -> dict:
        ex = SandboxExecutor()
        try:
            return await ex.execute(
                {"code": 'echo "$WHO says hi"', "language": "bash", "env_vars": {"WHO": "bash"}}
            )
        finally:
            await ex.close()
            await ex.close()  # idempotent

    result = run(scenario())
    assert result["success"] and result["output"] == "bash says hi\n"


@pytest.mark.timeout(120)
def test_pause_mode_resumes_with_state_after_the_sandbox_paused(sdk_env: dict[str, str]) -> None:
    import time

    from e2b_code_interpreter import AsyncSandbox

    from e2b_kernel.config import SessionConfig

    async def scenario() -> tuple[str, dict]:
        config = SessionConfig(idle="pause", sandbox_timeout=2)
        async with SandboxExecutor(config=config) as ex:
            first = await ex.execute({"code": "x = 41"})
            state, deadline = "", time.monotonic() + 60
            while state != "paused" and time.monotonic() < deadline:
                await asyncio.sleep(0.25)  # poll the service for the real state
                info = await AsyncSandbox.get_info(
                    first["sandbox_id"],
                    api_key=sdk_env["E2B_API_KEY"],
                    api_url=sdk_env["E2B_API_URL"],
                )
                state = str(getattr(info.state, "value", info.state))
            return state, await ex.execute({"code": "print(x + 1)"})

    state, after = run(scenario())
    assert state == "paused"
    assert after["success"] and after["output"] == "42\n"


def test_the_api_key_never_reaches_the_sandbox(sdk_env: dict[str, str]) -> None:
    async def scenario() -> dict:
        async with SandboxExecutor() as ex:
            code = "import os\nprint(sorted(k for k in os.environ if 'E2B_API' in k))"
            return await ex.execute({"code": code})

    result = run(scenario())
    assert result["output"] == "[]\n"
    assert sdk_env["E2B_API_KEY"] not in repr(result)
