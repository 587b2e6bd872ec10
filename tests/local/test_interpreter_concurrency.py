"""Eight sandboxes running code at once from threads: every output accounted for and in order."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from e2b_code_interpreter import OutputMessage, Sandbox
from local_helpers import sdk_options

from e2b_kernel.local import RunningService

SANDBOXES = 8
LINES = 20

CODE = f"""
import time
for i in range({LINES}):
    print(f"{{tag}} line {{i}}")
    time.sleep(0.05)
total = sum(range({LINES}))
total
"""


def run_one(service: RunningService, index: int) -> tuple[str, list[str], str | None]:
    tag = f"sandbox-{index}"
    lines: list[str] = []

    def on_stdout(message: OutputMessage) -> None:
        lines.append(message.line)

    sbx = Sandbox.create(**sdk_options(service))
    try:
        sbx.run_code(f"tag = {tag!r}")
        execution = sbx.run_code(CODE, on_stdout=on_stdout, timeout=240)
        assert execution.error is None, execution.error
        assert "".join(execution.logs.stdout) == "".join(lines)
        return tag, lines, execution.text
    finally:
        sbx.kill()


@pytest.mark.timeout(420)
def test_eight_sandboxes_run_code_at_once(local_service: RunningService) -> None:
    with ThreadPoolExecutor(SANDBOXES) as pool:
        futures = [pool.submit(run_one, local_service, index) for index in range(SANDBOXES)]
        outcomes = [future.result() for future in futures]
    for tag, lines, text in outcomes:
        # ipykernel may batch prints made within one flush interval into one message.
        printed = "".join(lines).splitlines()
        assert printed == [f"{tag} line {i}" for i in range(LINES)]
        assert text == str(sum(range(LINES)))
