"""The service on a daemon thread of this process, with its own event loop (``start_in_thread``)."""

from __future__ import annotations

import asyncio
import os
import threading

from .running import START_TIMEOUT, ServiceOptions, ServiceRecord
from .service.server import CannotListen, ServiceCore

__all__ = ["ThreadService"]


class ThreadService(ServiceRecord):
    """The service on a daemon thread with its own event loop."""

    def __init__(self, host: str, port: int, options: ServiceOptions) -> None:
        self._core = ServiceCore(host, port, **options)
        self.pid = os.getpid()  # the service shares this process
        self.api_key = self._core.api_key  # random per start unless one was given
        self.isolation = self._core.isolation
        self._loop = asyncio.new_event_loop()
        self._stopped = False
        self._failure: CannotListen | None = None
        # uvicorn imports its protocol modules as it loads its config: done on this thread, as
        # an import on a new thread while this one imports can fail with a KeyError on Python
        # 3.11 (its import locks, CPython gh-87712).
        self._core.server.config.load()
        self._thread = threading.Thread(target=self._run, name="e2b-local-service", daemon=True)
        self._thread.start()
        self._await_listening()
        self.url = self._core.url()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._core.serve())
        except CannotListen as exc:
            self._failure = exc  # raised to the starter by _await_listening
        finally:
            self._loop.close()

    def _await_listening(self) -> None:
        server = self._core.server
        for _ in range(int(START_TIMEOUT / 0.01)):
            if server.started:
                return
            if not self._thread.is_alive():
                break
            threading.Event().wait(0.01)
        if self._failure is not None:
            raise RuntimeError(f"the local E2B service {self._failure}: choose another port")
        raise RuntimeError("the local E2B service did not start listening (see the log)")

    def stop(self) -> None:
        """Kill every sandbox and stop serving; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self._core.shutdown(), self._loop)
            future.result(timeout=60)
            self._thread.join(timeout=30)
