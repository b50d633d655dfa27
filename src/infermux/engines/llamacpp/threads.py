"""How llama.cpp's OpenMP threads wait for each other, chosen before the library loads.

The threads of one decode step meet hundreds of times per step. OpenMP's default lets a waiting thread
spin a little before it sleeps: fastest when every thread has a core, many times slower when the cores
are shared (a thread spins while the one it waits for is not scheduled). Measured on 2 cores
(docs/benchmarks.md, LLAMACPP): busy (load 5), a 32-row batch took 42.9 s spinning against 20.0 s
waiting passively; idle, passive waiting cost ~25–30 % of batched throughput (90 against 122 tok/s).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = ["busy_cores", "choose_omp_wait_policy", "math_cores", "omp_wait_policy"]

#: Other work on the machine, in cores, above which llama.cpp's threads wait passively.
BUSY_THRESHOLD = 0.5


def busy_cores(interval: float = 0.1) -> float:
    """Cores kept busy by the machine over the next ``interval`` seconds (Linux ``/proc/stat``); elsewhere
    the 1-minute load average, which lags and counts this process's own recent work."""
    try:
        first = _cpu_times()
        time.sleep(interval)
        second = _cpu_times()
    except (OSError, ValueError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    total = sum(second) - sum(first)
    idle = (second[3] + second[4]) - (first[3] + first[4])  # idle + iowait
    return 0.0 if total <= 0 else (os.cpu_count() or 1) * (1 - idle / total)


def _cpu_times() -> list[int]:
    with open("/proc/stat", encoding="ascii") as f:
        fields = f.readline().split()
    if not fields or fields[0] != "cpu":
        raise ValueError("unexpected /proc/stat")
    return [int(x) for x in fields[1:8]]


def choose_omp_wait_policy(busy: float | None = None) -> str | None:
    """Set ``OMP_WAIT_POLICY`` for llama.cpp's threads; returns what was set (None: left as it was).

    A user's own setting wins. When other work keeps ``busy`` (default: :func:`busy_cores`, measured now)
    at half a core or more, threads wait passively (``PASSIVE``); on an idle machine OpenMP's default is
    kept. OpenMP reads the variable once, when the library loads: a process that already loaded
    llama.cpp keeps what it had.
    """
    if "OMP_WAIT_POLICY" in os.environ:
        return None
    policy = omp_wait_policy(busy_cores() if busy is None else busy)
    if policy is not None:
        os.environ["OMP_WAIT_POLICY"] = policy
    return policy


def omp_wait_policy(busy: float) -> str | None:
    """The policy :func:`choose_omp_wait_policy` sets when ``busy`` cores are taken by other work (None:
    OpenMP's default), without setting it."""
    return "PASSIVE" if busy >= BUSY_THRESHOLD else None


def math_cores(allowed: Iterable[int] | None = None, sysfs: Path = Path("/sys/devices/system/cpu")) -> int:
    """The threads llama.cpp's own tools run with by default: one per physical core of the CPUs this
    process may use (``allowed``, default its affinity); hyper-threads of one core count once (Linux
    ``sysfs`` topology; where it is missing, every allowed CPU counts)."""
    if allowed is None:
        allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cpus = sorted(allowed)
    cores = set()
    for cpu in cpus:
        try:
            cores.add((sysfs / f"cpu{cpu}" / "topology" / "thread_siblings_list").read_text().strip())
        except OSError:
            return max(1, len(cpus))
    return max(1, len(cores))
