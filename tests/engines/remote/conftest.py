"""Fixtures of the remote-engine tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def vllm_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Base URL of a ``vllm serve`` on the default model served as ``smollm2`` with the LoRA adapter
    ``my-lora``: the session's shared server (``vllm_serve`` in tests/conftest.py), or the one already
    running at ``$INFERMUX_TEST_VLLM_URL``."""
    running = os.environ.get("INFERMUX_TEST_VLLM_URL")
    if running:
        yield running.rstrip("/")
        return
    yield request.getfixturevalue("vllm_serve").url
