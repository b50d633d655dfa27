"""How the LLAMACPP engine sets OpenMP's wait policy before llama.cpp loads (no model needed)."""

from __future__ import annotations

import os

import pytest

from infermux.engines.llamacpp.engine import choose_omp_wait_policy


def test_a_busy_machine_gets_passive_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert choose_omp_wait_policy(load=4.0) == "PASSIVE"
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


def test_an_idle_machine_keeps_openmps_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert choose_omp_wait_policy(load=0.3) is None
    assert "OMP_WAIT_POLICY" not in os.environ


def test_the_users_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert choose_omp_wait_policy(load=9.0) is None
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
