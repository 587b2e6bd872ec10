"""How JupyterCells ends a running cell when the Jupyter Server reports its kernel's death.

The channels are real but never opened (sends only queue); the server's messages are fed to
the cells as the socket's reader would.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from jupyter_client.session import Session

from e2b_kernel.core import jupyter_cells
from e2b_kernel.core.jupyter_cells import JupyterCells
from e2b_kernel.core.jupyter_server import JupyterEndpoint
from e2b_kernel.core.kernel_channels import KernelChannels, Parts

SESSION = Session(key=b"k")


def _parts(msg: dict) -> Parts:
    return [bytes(p) for p in SESSION.serialize(msg)[2:]]


def _server_says(state: str) -> Parts:
    """The Jupyter Server's own status notice about the kernel process (no parent)."""
    return _parts(SESSION.msg("status", {"execution_state": state}))


def _cells_with_a_running_cell() -> tuple[JupyterCells, KernelChannels, jupyter_cells._Cell]:
    cells = JupyterCells(session=None, log=logging.getLogger("test"))  # type: ignore[arg-type]
    channels = KernelChannels(
        JupyterEndpoint("http://127.0.0.1:9"), "k", cells._received, cells._lost, cells.log
    )
    cells._channels = channels
    cell = cells._cells["running"] = jupyter_cells._Cell("running")
    cell.seen_busy = True  # the process said it runs it
    return cells, channels, cell


@pytest.mark.parametrize("sandbox_goes_too", [False, True])
def test_a_dead_kernel_ends_its_cell_only_once_a_new_process_shows_the_sandbox_lives(
    sandbox_goes_too: bool,
) -> None:
    """A killed sandbox's kernel may die a moment before its server, which then still says
    'restarting': the cell must then end as lost (its socket closes), not as KernelDied."""

    async def scenario() -> list[tuple[str, str, dict]]:
        cells, channels, cell = _cells_with_a_running_cell()
        if sandbox_goes_too:
            closed: asyncio.Future = asyncio.get_running_loop().create_future()
            closed.set_result(None)
            channels._reader = closed  # type: ignore[assignment]
        cells._received("iopub", _server_says("restarting"))
        assert cell.messages.empty()  # not known yet why it died
        if not sandbox_goes_too:
            while not channels._nudges:  # the renudge task queues its first nudge when it runs
                await asyncio.sleep(0)
            nudge = json.loads(channels._nudges[0][0])
            answer = SESSION.msg("status", {"execution_state": "busy"}, parent={"header": nudge})
            assert channels._is_nudge_answer("iopub", _parts(answer))
        assert channels._renudging is not None
        assert await channels._renudging is not sandbox_goes_too
        await asyncio.sleep(0)  # the future's done callbacks run in the loop's next turn
        received = []
        while not cell.messages.empty():
            received.append(cell.messages.get_nowait())
        await channels.close()
        return received

    received = asyncio.run(scenario())
    if sandbox_goes_too:
        assert received == []  # the socket's close ends it (SandboxLost when the sandbox is gone)
    else:
        assert received == [(jupyter_cells._DIED, jupyter_cells._DIED, {"state": "restarting"})]


def test_a_cell_held_after_exit_that_times_out_is_taken_back_not_run_later() -> None:
    """Requests wait in the channels from exit()'s reply until the new process answers: a
    cell whose --timeout passes meanwhile fails, and is taken back (sent later, it would run
    with nobody waiting, and its stop would restart the new kernel for nothing)."""
    from types import SimpleNamespace

    from e2b_kernel.errors import ExecutionTimeout

    async def scenario() -> None:
        cells = JupyterCells(
            session=SimpleNamespace(config=SimpleNamespace(cell_timeout=None)),  # type: ignore[arg-type]
            log=logging.getLogger("test"),
        )
        channels = KernelChannels(
            JupyterEndpoint("http://127.0.0.1:9"), "k", cells._received, cells._lost, cells.log
        )
        stopped: list[str] = []

        async def stop(cell: jupyter_cells._Cell, *_args: object) -> None:
            stopped.append(cell.msg_id)

        cells._stop = stop  # type: ignore[method-assign]
        request = SESSION.msg("execute_request", {"code": "1"})
        msg_id = request["header"]["msg_id"]
        cell = cells._cells[msg_id] = jupyter_cells._Cell(msg_id)
        channels.send("shell", _parts(request))  # held: IOPub is not live (after exit())
        assert channels.unsent_ids() == {msg_id}
        with pytest.raises(ExecutionTimeout):
            async for _event in cells._events(cell, channels, 0.05, None):
                pass
        assert channels.unsent_ids() == set() and stopped == []
        assert not channels.withdraw(msg_id)  # once only
        await channels.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "parts",
    [
        [b"{}", b"[]", b"{}", b"{}"],  # a parent header that is not an object
        [b'{"msg_type": "status"}', b"not json", b"{}", b"{}"],
    ],
)
def test_a_message_the_cells_cannot_read_is_dropped_not_raised(parts: Parts) -> None:
    """The sandbox's kernel can send any bytes: an exception here would end the channels'
    reader, and the running cell with it."""
    cells, _channels, cell = _cells_with_a_running_cell()
    cells._received("iopub", parts)
    assert cell.messages.empty()
