"""A starlette app served on a free loopback port, in a thread, for the length of a test."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LoopbackServer:
    """``with LoopbackServer(routes) as server:`` serves ``routes`` at ``server.url``."""

    def __init__(self, routes: list[Route]) -> None:
        # Bound here, so no other process can take the port between choosing and binding it.
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._socket.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(Starlette(routes=routes), log_level="warning")
        # uvicorn imports its protocol modules when it loads its config; done on this thread,
        # so the server thread imports nothing (Python 3.11's import locks can fail a thread's
        # import with a KeyError while another thread imports: CPython gh-87712).
        config.load()
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:  # set by uvicorn once it listens
            assert self._thread.is_alive(), "the test server could not start"
            assert time.monotonic() < deadline, "the test server did not start within 10 s"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._socket.close()
