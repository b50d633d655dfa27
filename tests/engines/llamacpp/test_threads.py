"""How the LLAMACPP engine sets OpenMP's wait policy before llama.cpp loads (no model needed)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from infermux.engines.llamacpp.threads import busy_cores, choose_omp_wait_policy, omp_wait_policy


def test_a_busy_machine_gets_passive_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert choose_omp_wait_policy(busy=1.7) == "PASSIVE"
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


def test_an_idle_machine_keeps_openmps_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert choose_omp_wait_policy(busy=0.1) is None
    assert "OMP_WAIT_POLICY" not in os.environ


def test_the_users_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert choose_omp_wait_policy(busy=9.0) is None
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux /proc/stat")
def test_busy_cores_sees_a_spinning_thread() -> None:
    stop = time.monotonic() + 1.0

    def spin() -> None:
        while time.monotonic() < stop:
            pass

    thread = threading.Thread(target=spin)
    thread.start()
    try:
        measured = busy_cores(0.3)
    finally:
        thread.join()
    assert 0.7 <= measured <= (os.cpu_count() or 1)


def test_the_policy_can_be_asked_without_setting_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert omp_wait_policy(1.7) == "PASSIVE" and omp_wait_policy(0.1) is None
    assert "OMP_WAIT_POLICY" not in os.environ


def _topology(root, siblings: dict[int, str]):
    for cpu, text in siblings.items():
        folder = root / f"cpu{cpu}" / "topology"
        folder.mkdir(parents=True)
        (folder / "thread_siblings_list").write_text(text + "\n")
    return root


def test_math_cores_counts_hyper_threads_of_one_core_once(tmp_path) -> None:
    from infermux.engines.llamacpp.threads import math_cores

    sysfs = _topology(tmp_path, {0: "0,2", 1: "1,3", 2: "0,2", 3: "1,3"})  # 2 cores, 2 threads each
    assert math_cores(range(4), sysfs) == 2
    assert math_cores([0, 1], sysfs) == 2  # the CPUs this process may use only
    assert math_cores([0, 2], sysfs) == 1


def test_math_cores_without_topology_counts_every_allowed_cpu(tmp_path) -> None:
    from infermux.engines.llamacpp.threads import math_cores

    assert math_cores([0, 1, 5], tmp_path) == 3
    assert 1 <= math_cores() <= (os.cpu_count() or 1)
