"""How ``%%e2b`` cells reach each named sandbox: its Jupyter Server, or E2B's ``/execute``.

``E2B_KERNEL_TRANSPORT`` decides, as for the kernel: ``auto`` (jupyter when the sandbox's
Jupyter Server answers), ``jupyter`` or ``execute``. It is chosen once per sandbox (again for
a new sandbox) and applies to Python cells only:

``--language`` other than python uses ``/execute``: the Jupyter Server serves the sandbox's
Python kernels; other languages are E2B contexts reached through ``/execute`` only. Cells with
environment variables (``--env``, ``%e2b env``) stay on the jupyter transport: silent
requests set and restore them around the cell (see ``core.jupyter_cells``).

Both paths run in the same remote Python kernel (the default context), so they share state.
"""

from __future__ import annotations

from ..core import SandboxSession
from ..core.jupyter_cells import JupyterCells
from ..core.jupyter_server import JupyterServerError, choose_transport
from ..errors import SandboxLost, SandboxUnavailable

__all__ = ["EXECUTE_ONLY", "Transports"]

EXECUTE_ONLY = "cells with --language other than python use /execute"
NOT_CHOSEN = "chosen when the first %%e2b cell runs (E2B_KERNEL_TRANSPORT)"


class Transports:
    """Per sandbox name: the transport chosen for its sandbox, and the open jupyter channels."""

    def __init__(self) -> None:
        self._cells: dict[str, JupyterCells] = {}
        self._chosen_for: dict[str, str | None] = {}  # name -> sandbox id it was chosen for

    @staticmethod
    def describe_unchosen(session: SandboxSession) -> None:
        """What ``%e2b status`` says before the first cell."""
        session.transport = str(session.config.transport)
        session.transport_reason = NOT_CHOSEN

    async def cells_for(self, name: str, session: SandboxSession) -> JupyterCells | None:
        """The jupyter channels for ``name``'s Python cells, or None when they use /execute.

        Needs a started sandbox. Raises when E2B_KERNEL_TRANSPORT=jupyter and the sandbox's
        Jupyter Server does not answer (nothing falls back silently).
        """
        cells = self._cells.get(name)
        if cells is not None and cells.session is not session:  # %e2b connect replaced it
            await self.close(name)
            cells = None
        if self._chosen_for.get(name) != session.sandbox_id:
            await self._choose(name, session)
        if session.transport != "jupyter":
            return None
        if cells is None:
            cells = self._cells[name] = JupyterCells(session, session.log)
        return cells

    async def _choose(self, name: str, session: SandboxSession) -> None:
        setting = str(session.config.transport)
        try:
            endpoint = None if setting == "execute" else session.jupyter_endpoint()
            transport, why = await choose_transport(setting, endpoint)
        except JupyterServerError as exc:
            lost = await session.confirm_lost()
            if lost is not None:
                raise SandboxLost(lost) from None
            raise SandboxUnavailable(
                f"{exc}. Set E2B_KERNEL_TRANSPORT=auto (or execute) to run %%e2b cells "
                "through E2B's /execute instead."
            ) from None
        session.transport = transport
        session.transport_reason = f"{why}; {EXECUTE_ONLY}" if transport == "jupyter" else why
        self._chosen_for[name] = session.sandbox_id

    async def close(self, name: str) -> None:
        """Close ``name``'s channels (its session is closing or was replaced)."""
        self._chosen_for.pop(name, None)
        await self.drop_channels(name)

    async def drop_channels(self, name: str) -> None:
        """Close ``name``'s channels but keep its transport; the next cell opens new ones.

        After its remote kernel restarted: Jupyter Server re-attaches a connection opened
        before the restart without the readiness check a new one gets, and such a connection
        can miss the restarted kernel's IOPub messages (a cell then never ends).
        """
        cells = self._cells.pop(name, None)
        if cells is not None:
            await cells.close()

    async def close_all(self) -> None:
        for name in list(self._cells):
            await self.close(name)
