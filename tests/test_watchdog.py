"""tests/watchdog.py: a server child that dies fails its test at once, naming the signal."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.watchdog import POLL_S, check, exit_description, kill, watched

CRASH_AFTER = "import os, signal, time; time.sleep({delay}); os.kill(os.getpid(), signal.SIGSEGV)"


def test_a_server_that_crashes_interrupts_the_blocked_test_at_once() -> None:
    proc = subprocess.Popen([sys.executable, "-c", CRASH_AFTER.format(delay=0.5)])
    start = time.monotonic()
    killed = r"crashy-server \(pid \d+\) was killed by SIGSEGV"
    with watched("crashy-server", proc, lambda: "last log line"), pytest.raises(pytest.fail.Exception, match=killed):
        time.sleep(60)  # a test blocked on its server (a read, a select, a sleep)
    assert time.monotonic() - start < 10


def test_a_server_found_dead_fails_the_next_test_in_set_up() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    gone = r"(?s)gone-server .* exited with status 3.*address in use"
    with watched("gone-server", proc, lambda: "bind: address in use"), pytest.raises(pytest.fail.Exception, match=gone):
        check()
    check()  # once its fixture lets go of it, nothing is reported


def test_exit_statuses_are_named() -> None:
    assert exit_description(-4) == "was killed by SIGILL (an instruction this CPU lacks)"
    assert exit_description(-9) == "was killed by SIGKILL"
    assert exit_description(0) == "exited with status 0"


def test_a_server_the_test_kills_on_purpose_is_not_reported() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with watched("killed-server", proc, lambda: "log"):
        kill(proc)
        time.sleep(3 * POLL_S)  # the watcher polls while the test goes on: no interruption
        check()
    assert proc.returncode == -9
