"""Server children that tests depend on are watched, so a crash costs one clear failure, not a timeout.

A server started by :mod:`tests.servers` or :mod:`tests.serve.running` is registered with
:func:`watched` for as long as its fixture holds it. When it dies:

- the test running at that moment fails at once (the watcher thread signals the main thread, whose
  handler raises pytest's failure: a blocked socket read, ``select`` or ``sleep`` is interrupted);
- every later test fails in set-up while the fixture still holds the dead server (``conftest``);

each time naming the server, how it ended (a signal's name: SIGSEGV, SIGILL, ...) and its log's tail.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator

import pytest

POLL_S = 0.5
_SIGNAL = signal.SIGUSR2


@dataclasses.dataclass
class _Child:
    name: str
    proc: subprocess.Popen  # type: ignore[type-arg]
    tail: Callable[[], str]
    reported: bool = False
    expected: bool = False  # the test ended it on purpose (:func:`kill`)

    def death(self) -> str | None:
        if self.expected:
            return None
        code = self.proc.poll()
        if code is None:
            return None
        return f"{self.name} (pid {self.proc.pid}) {exit_description(code)}; its log ends:\n{self.tail()}"


_children: dict[int, _Child] = {}
_lock = threading.Lock()
_pending: list[str] = []
_in_test = threading.Event()
_thread: threading.Thread | None = None


def exit_description(code: int) -> str:
    """``-11`` -> "was killed by SIGSEGV (a native crash)"; ``1`` -> "exited with status 1"."""
    if code >= 0:
        return f"exited with status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    why = {"SIGSEGV": " (a native crash)", "SIGILL": " (an instruction this CPU lacks)", "SIGABRT": " (an abort)"}
    return f"was killed by {name}{why.get(name, '')}"


@contextlib.contextmanager
def watched(name: str, proc: subprocess.Popen, tail: Callable[[], str]) -> Iterator[None]:  # type: ignore[type-arg]
    """Watch ``proc`` (described as ``name``, ``tail()`` its log) until the block ends."""
    global _thread
    child = _Child(name, proc, tail)
    with _lock:
        _children[id(child)] = child
        if _thread is None:
            _thread = threading.Thread(target=_watch, name="server-watchdog", daemon=True)
            _thread.start()
    try:
        yield
    finally:
        with _lock:
            _children.pop(id(child), None)


def kill(proc: subprocess.Popen, timeout: float = 30) -> None:  # type: ignore[type-arg]
    """SIGKILL a watched ``proc`` on purpose and reap it: its death is the test's doing, not a failure."""
    with _lock:
        for child in _children.values():
            if child.proc is proc:
                child.expected = True
    proc.kill()
    proc.wait(timeout=timeout)


def check() -> None:
    """Fail the calling test if a watched server has died."""
    with _lock:
        deaths = [d for c in _children.values() if (d := c.death())]
    if deaths:
        pytest.fail("a server this test needs is gone: " + "\n\n".join(deaths), pytrace=False)


@contextlib.contextmanager
def running_test() -> Iterator[None]:
    """Mark a test as running: a death now interrupts it (the handler runs in the main thread)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(_SIGNAL, _interrupt)
    _in_test.set()
    try:
        yield
    finally:
        _in_test.clear()
        with _lock:
            _pending.clear()


def _watch() -> None:
    main = threading.main_thread()
    while main.is_alive():
        interrupt = False
        with _lock:
            for child in _children.values() if _in_test.is_set() else ():
                if not child.reported and (death := child.death()):
                    child.reported = True  # between tests, check() reports it instead
                    _pending.append(death)
                    interrupt = True
        if interrupt and main.ident is not None:
            signal.pthread_kill(main.ident, _SIGNAL)
        threading.Event().wait(POLL_S)


def _interrupt(signum: int, frame: object) -> None:
    with _lock:
        deaths, _pending[:] = _pending[:], []
    if deaths and _in_test.is_set():
        pytest.fail("a server this test needs died while it ran: " + "\n\n".join(deaths), pytrace=False)
