"""The thread that owns a local model's decoding, fed from any thread or event loop.

Requests wait in an inbox until the thread's next step takes them in beside the sequences already
generating (continuous batching); a cancelled request is dropped at the next step. The LLAMACPP and
NATIVE schedulers subclass :class:`DecoderThread` and write only their loop (``_run``), which takes
``_inbox`` under ``_wake``, waits on ``_wake`` when idle and stops once ``_closed``.
"""

from __future__ import annotations

import threading
from typing import Any, Generic, TypeVar

__all__ = ["DecoderThread"]

R = TypeVar("R")


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
