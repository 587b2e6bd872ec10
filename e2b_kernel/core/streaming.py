"""``run_code`` callbacks -> an ``asyncio.Queue`` of Jupyter-shaped events, read while it runs."""

from __future__ import annotations

import asyncio
from typing import Any

from . import outputs

__all__ = ["DONE", "Event", "start_run_code"]

Event = tuple[str, dict]
DONE: Event = ("__done__", {})  # queued once the run_code task has finished, however it ended


def start_run_code(
    sandbox: Any, code: str, *, envs: dict[str, str] | None, language: str | None
) -> tuple[asyncio.Task, asyncio.Queue[Event]]:
    """Start ``sandbox.run_code`` as a task whose outputs arrive on the returned queue."""
    queue: asyncio.Queue[Event] = asyncio.Queue()

    def on_stdout(message: Any) -> None:
        queue.put_nowait(("stream", {"name": "stdout", "text": message.line}))

    def on_stderr(message: Any) -> None:
        queue.put_nowait(("stream", {"name": "stderr", "text": message.line}))

    def on_result(result: Any) -> None:
        queue.put_nowait(outputs.result_to_event(result))

    def on_error(error: Any) -> None:
        queue.put_nowait(("error", outputs.error_to_content(error)))

    kwargs: dict[str, Any] = {}
    if language and language != "python":
        kwargs["language"] = language
    task = asyncio.create_task(
        sandbox.run_code(
            code,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
            on_result=on_result,
            on_error=on_error,
            envs=envs or None,
            timeout=0,  # the SDK's own deadline fires at about 2x; callers enforce their own
            **kwargs,
        ),
        name="e2b-run-code",
    )
    task.add_done_callback(lambda _task: queue.put_nowait(DONE))
    return task, queue
