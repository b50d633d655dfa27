"""One writer per job: an OS file lock on ``<job folder>/<output name>.lock``.

Every job writer (``infer``, ``engine.infer`` with an output, Ray, ``batch fetch``) holds the lock while it
reads and writes the job's files. The lock is the kernel's (``flock``): a run that crashes or is killed
releases it with its process, so nothing is ever left stuck. The file holds the PID of the run that holds
it, which the second run names in its error. Locks are counted per process, so code that already holds a
job's lock (the CLI takes it before loading a model) can take it again.

Where the OS has no ``flock`` (Windows), jobs run unlocked.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from infermux.errors import OutputError

__all__ = ["JobBusyError", "holder", "job_lock", "running_pid"]

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

_held: dict[str, list[Any]] = {}  # lock path -> [open file, count], for the locks this process holds
_guard = threading.Lock()


class JobBusyError(OutputError):
    """Another process is running a job on the same output."""


def holder(path: Path) -> int | None:
    """The PID written in the lock file at ``path`` while a run holds it, or None."""
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def running_pid(path: Path) -> int | None:
    """The PID of the process holding the job lock at ``path`` now, or None (no run holds it; a file left
    by a killed run is not held)."""
    if fcntl is None or not path.exists():
        return None
    try:
        with open(path, "rb") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return holder(path) or 0
            return None
    except OSError:
        return None


def _try_lock(path: Path) -> Any:
    """The open lock file, locked; None when another process holds it."""
    while True:
        fh = open(path, "a+")  # noqa: SIM115 - held until the job ends
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return None
        except OSError:
            fh.close()
            raise
        # The run that held it may have removed the file between our open and our lock: lock the file that
        # is there now, not a removed one.
        try:
            same = os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fh
        fh.close()


@contextlib.contextmanager
def job_lock(path: Path, output: str) -> Iterator[None]:
    """Hold the job lock at ``path`` (the job writing ``output``) while inside; :class:`JobBusyError` when
    another process holds it."""
    if fcntl is None:
        yield
        return
    key = str(path.resolve())
    with _guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
        else:
            try:
                fh = _try_lock(path)
            except OSError as exc:
                raise OutputError(f"{path}: cannot create the job's lock file ({exc.strerror}).") from None
            if fh is None:
                pid = holder(path)
                who = f"another infermux run (PID {pid})" if pid else "another infermux run"
                raise JobBusyError(
                    f"{output}: {who} is writing this job's output now. Wait for it to finish (or stop it), "
                    "then rerun to resume; or choose another --output_path."
                )
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n")
            fh.flush()
            _held[key] = entry = [fh, 1]
    try:
        yield
    finally:
        with _guard:
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                with contextlib.suppress(OSError):
                    path.unlink()  # while still locked: a run waiting on this file locks a fresh one
                entry[0].close()
