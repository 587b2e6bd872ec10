"""Eight sandboxes running commands at once from threads, every output accounted for."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from e2b import Sandbox

from e2b_kernel.local import RunningService

SANDBOXES = 8
LINES = 200


def _work(service: RunningService, index: int) -> tuple[str, list[str], str]:
    opts = {"api_key": service.api_key, "api_url": service.url, "sandbox_url": service.url}
    sandbox = Sandbox.create(timeout=300, envs={"WHO": f"sbx{index}"}, **opts)
    try:
        chunks: list[str] = []
        sandbox.commands.run(
            f'for i in $(seq 1 {LINES}); do echo "$WHO line $i"; done',
            on_stdout=chunks.append,
        )
        sandbox.files.write("/home/user/mine.txt", f"file of {index}")
        own = sandbox.files.read("/home/user/mine.txt")
        return sandbox.sandbox_id, "".join(chunks).splitlines(), own
    finally:
        sandbox.kill()


@pytest.mark.timeout(300)
def test_eight_sandboxes_in_parallel(local_service: RunningService) -> None:
    with ThreadPoolExecutor(SANDBOXES) as pool:
        results = list(pool.map(lambda i: _work(local_service, i), range(SANDBOXES)))
    assert len({sandbox_id for sandbox_id, _, _ in results}) == SANDBOXES
    for index, (_id, lines, own) in enumerate(results):
        assert lines == [f"sbx{index} line {i}" for i in range(1, LINES + 1)]
        assert own == f"file of {index}"
