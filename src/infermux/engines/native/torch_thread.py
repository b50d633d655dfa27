"""The one long-lived thread a NATIVE engine runs its batch work on (loading the model included).

Why it matters for speed: torch's CPU kernels run on OpenMP (GNU libgomp in the torch wheels), and each
thread that enters a parallel region gets a team of OpenMP worker threads of its own. libgomp counts the
threads of every team; once they outnumber the CPUs it stops spinning between parallel regions (its
"throttled" spin count, about 100 spins instead of about 300,000) and every region start wakes the team
through the kernel. A model's forward pass is hundreds of parallel regions, so a second team alive in the
process (the main thread's, made while loading the model, next to the worker thread's that runs the
batches) cost the engine 20-30 % against ``model.generate`` called in the main thread. A new worker
thread per ``infer`` call (``asyncio.to_thread`` in a fresh event loop) also paid a new team and new
malloc arenas each time. The faster the matrix products (AMX, GPUs aside), the larger that share.

Running the load and every batch on this one thread keeps one team for the engine's work; the number of
threads in it is torch's setting (``torch.set_num_threads`` is applied to each thread that runs torch).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["TorchThread"]

T = TypeVar("T")


class TorchThread:
    """A single worker thread; :meth:`run` calls a function on it and waits (inline when already on it)."""

    def __init__(self, name: str = "infermux-native-torch") -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.thread: threading.Thread | None = None  # set on its first call

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        """Queue ``fn(*args, **kwargs)`` on the thread; its future."""
        return self._executor.submit(self._call, fn, args, kwargs)

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` run on the thread; raises what it raises."""
        if threading.current_thread() is self.thread:
            return fn(*args, **kwargs)
        return self.submit(fn, *args, **kwargs).result()

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        self.thread = threading.current_thread()
        return fn(*args, **kwargs)

    def close(self) -> None:
        """Let the thread end once its queued calls are done (does not wait: close may run on it)."""
        self._executor.shutdown(wait=False)
