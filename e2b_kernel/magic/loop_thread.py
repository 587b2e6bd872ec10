"""A private asyncio loop in a daemon thread, for synchronous callers such as the magics.

The magic runs inside a kernel whose own loop is already running, so it cannot ``await``.
Like IPython's ``%%script`` it hands coroutines to a loop of its own in a daemon thread
(no ``nest_asyncio``). Results and streamed items come back to the *calling* thread, where
they are printed: ipykernel routes output by the parent message of the thread that writes.

Ctrl-C arrives in the calling thread as ``KeyboardInterrupt`` while it waits. We then cancel
the task on the private loop (the session closes its stream, so the remote cell is
interrupted), wait a bounded time for that to finish, and re-raise ``KeyboardInterrupt``.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

__all__ = ["LoopThread"]

T = TypeVar("T")

# How long an interrupted call may take to stop the remote cell before we give up waiting.
CANCEL_GRACE_SECONDS = 15.0

_ITEM, _DONE, _FAILED = "item", "done", "failed"


class _Call:
    """One coroutine handed to the loop: its task, and whether it has finished."""

    def __init__(self) -> None:
        self.task: asyncio.Task[Any] | None = None
        self.cancelled = False
        self.finished = threading.Event()

    async def guard(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` as this call's task, flagging the end even on failure."""
        self.task = asyncio.current_task()
        try:
            if self.cancelled:  # cancelled before it started
                coro.close()
                raise asyncio.CancelledError
            return await coro
        finally:
            self.finished.set()

    def cancel(self) -> None:
        """On the loop thread: cancel the task, or mark a call that never started as done."""
        self.cancelled = True
        if self.task is not None:
            self.task.cancel()
        else:
            self.finished.set()


class LoopThread:
    """An asyncio event loop running forever in a daemon thread, started on first use."""

    def __init__(self, name: str = "e2b-kernel-loop") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The private loop, started if needed."""
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name=self._name, daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    @property
    def running(self) -> bool:
        """Whether the loop thread has been started and not stopped."""
        return self._thread is not None and self._thread.is_alive()

    def run(self, coro: Coroutine[Any, Any, T], *, grace: float = CANCEL_GRACE_SECONDS) -> T:
        """Run ``coro`` on the private loop and return its result; Ctrl-C cancels it."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("LoopThread.run() called from its own loop thread")
        call = _Call()
        try:
            # Inside the try: Ctrl-C can land while the call is being scheduled.
            future = asyncio.run_coroutine_threadsafe(call.guard(coro), self.loop)
            return future.result()
        except KeyboardInterrupt:
            self._cancel_and_wait(call, grace)
            raise

    def iterate(
        self, agen: AsyncIterator[T], *, grace: float = CANCEL_GRACE_SECONDS
    ) -> Iterator[T]:
        """Yield the items of ``agen`` in the calling thread as the private loop produces them.

        Closing the iterator early (an exception in the consumer, Ctrl-C while waiting)
        cancels the producing task and waits up to ``grace`` seconds for it to stop.
        """
        items: queue.Queue[tuple[str, Any]] = queue.Queue()
        call = _Call()

        async def pump() -> None:
            try:
                async for item in agen:
                    items.put((_ITEM, item))
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # handed to the consumer, who re-raises it
                items.put((_FAILED, exc))
            else:
                items.put((_DONE, None))
            finally:
                aclose = getattr(agen, "aclose", None)
                if aclose is not None:
                    await aclose()

        ended = False
        try:
            asyncio.run_coroutine_threadsafe(call.guard(pump()), self.loop)
            while True:
                kind, value = items.get()
                if kind == _ITEM:
                    yield value
                    continue
                ended = True
                if kind == _FAILED:
                    raise value
                return
        finally:
            if ended:
                call.finished.wait(grace)  # the producer is only closing up
            elif not call.finished.is_set():
                self._cancel_and_wait(call, grace)

    def _cancel_and_wait(self, call: _Call, grace: float) -> None:
        """Cancel the call's task; wait for it to unwind (a second Ctrl-C stops waiting)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(call.cancel)
        try:
            call.finished.wait(grace)
        except KeyboardInterrupt:
            pass

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop and join the thread; idempotent."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if not loop.is_running():
            loop.close()
