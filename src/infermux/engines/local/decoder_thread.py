"""The thread that owns a local model's decoding, fed from any thread or event loop.

Requests wait in an inbox until the thread's next step takes them in beside the sequences already
generating (continuous batching); a cancelled request is dropped at the next step. The LLAMACPP and
NATIVE schedulers subclass :class:`DecoderThread` and write only their loop (``_run``), which takes
``_inbox`` under ``_wake``, waits on ``_wake`` when idle and stops once ``_closed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar

__all__ = ["DecoderThread", "emitted_rows", "thread_rows"]

R = TypeVar("R")
T = TypeVar("T")
_END = object()


async def emitted_rows(run: Callable[[Callable[[int, T], None]], Awaitable[object]]) -> AsyncIterator[tuple[int, T]]:
    """Await ``run(emit)`` and yield each ``(index, result)`` it emits (from any thread), as it emits it.

    This is how a local engine hands each row of a chunk to the batch loop the moment its decoder
    finishes it (see ``InferenceEngine._infer_rows``). An exception ``run`` raises is raised here after
    the rows it emitted; rows it never emitted are the caller's to fail.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def emit(index: int, result: T) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(queue.put_nowait, (index, result))

    task = asyncio.ensure_future(run(emit))
    # Emits are scheduled before the task's completion is: the end marker comes after every row.
    task.add_done_callback(lambda _: loop.call_soon(queue.put_nowait, _END))
    try:
        while (item := await queue.get()) is not _END:
            yield item
    finally:
        if not task.done():  # the consumer left early: the work ends on its own; its error is not lost
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
    await task


def thread_rows(work: Callable[[Callable[[int, T], None]], object]) -> AsyncIterator[tuple[int, T]]:
    """:func:`emitted_rows` of a blocking ``work(emit)`` run in a worker thread."""
    return emitted_rows(lambda emit: asyncio.to_thread(work, emit))


class DecoderThread(Generic[R]):
    """``engine`` names the engine in errors and the thread's name (``infermux-<engine>-decoder``)."""

    def __init__(self, engine: str) -> None:
        self._engine = engine
        self._inbox: list[R] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, request: R) -> None:
        """Queue ``request`` for the next step; starts the thread on first use. RuntimeError once closed."""
        with self._wake:
            if self._closed:
                raise RuntimeError(f"the {self._engine} engine is closed")
            self._inbox.append(request)
            if self._thread is None:
                name = f"infermux-{self._engine.lower()}-decoder"
                self._thread = threading.Thread(target=self._run, name=name, daemon=True)
                self._thread.start()
            self._wake.notify()

    def cancel(self, request: Any) -> None:
        """Drop ``request`` at the next step (nothing happens once it has finished)."""
        request.cancelled = True
        with self._wake:
            self._wake.notify()

    def close(self) -> None:
        """Stop the thread; requests still queued or in flight fail with a RuntimeError."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        raise NotImplementedError
