"""Fewer garbage-collector passes while a job runs.

Each row in flight holds a few dozen container objects until it is recorded (its coroutines, request and
reply, the answered conversation a job keeps). CPython collects its youngest generation after every 700
net allocations of such objects (``gc.get_threshold()[0]``), so a job whose server answers at once ran a
collection every few dozen rows, each traversing every young object: ~10 % of the client's CPU time on
P2 of ``benchmarks/bench_remote.py`` (docs/benchmarks.md), for almost no garbage (a job's objects are
freed by reference counting; cycles are rare).

While at least one job runs in the process, :func:`fewer_collections` raises the youngest generation's
threshold to :data:`JOB_THRESHOLD` (the older generations keep theirs, so full collections still happen
as the heap grows); when the last job ends, the thresholds in force before the first one are restored.
A program that turned the collector off or set a higher threshold itself is left as it is, and so is one
that changed the thresholds while a job ran. ``INFERMUX_GC_THRESHOLD`` sets another threshold; ``0``
leaves the collector alone.
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from collections.abc import Iterator

__all__ = ["JOB_THRESHOLD", "fewer_collections"]

#: The youngest generation's threshold while a job runs (CPython's default is 700; Python 3.14's
#: incremental collector uses 2000). At 10,000 the collector's share of P2 fell from ~10 % to ~3 %.
JOB_THRESHOLD = 10_000

_lock = threading.Lock()
_jobs = 0
_saved: tuple[int, ...] | None = None  # the thresholds before the first running job, None: left alone
_ours: tuple[int, ...] | None = None  # what the first job set


def _wanted() -> int:
    raw = os.environ.get("INFERMUX_GC_THRESHOLD")
    if raw is None:
        return JOB_THRESHOLD
    try:
        return max(0, int(raw))
    except ValueError:
        return JOB_THRESHOLD


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Run the body with the youngest generation collected every :data:`JOB_THRESHOLD` allocations (see the
    module docstring). Nests and may run in several threads at once: the first to enter sets it, the last to
    leave restores it."""
    global _jobs, _saved, _ours
    with _lock:
        _jobs += 1
        if _jobs == 1:
            current, wanted = gc.get_threshold(), _wanted()
            if gc.isenabled() and wanted and 0 < current[0] < wanted:
                _saved, _ours = current, (wanted, *current[1:])
                gc.set_threshold(*_ours)
    try:
        yield
    finally:
        with _lock:
            _jobs -= 1
            if _jobs == 0 and _saved is not None:
                if gc.get_threshold() == _ours:  # unless the program set its own meanwhile
                    gc.set_threshold(*_saved)
                _saved = _ours = None
