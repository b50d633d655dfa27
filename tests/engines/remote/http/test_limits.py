"""Per-minute limits (requests, input and output tokens) against a server that counts what it gets.

The 60 s window is compressed with ``INFERMUX_RATE_WINDOW_S`` so a test takes seconds. Arrival times are
measured by the server; requests travel a little after the client lets them go, so budgets are checked
over spans a bit shorter than the window.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from infermux.configs import GenerationParams, InferenceConfig, ModelParams, RemoteParams
from infermux.engines.registry import build_engine
from infermux.engines.remote.http.limits import WindowLimiter, estimate_tokens
from infermux.types import Conversation
from tests.fakes.counting import CountingChat

WINDOW = 2.0
SPAN = WINDOW * 0.75


def _rows(n: int, text: str) -> list[Conversation]:
    return [
        Conversation.model_validate({"messages": [{"role": "user", "content": f"{text}{i:02d}"}]}) for i in range(n)
    ]


def _run(server: CountingChat, rows: list[Conversation], max_new_tokens: int = 8, **limits: int) -> float:
    config = InferenceConfig(
        model=ModelParams(model_name="stub"),
        engine="REMOTE",
        generation=GenerationParams(max_new_tokens=max_new_tokens),
        remote_params=RemoteParams(api_url=server.url + "/v1", **limits),
    )
    engine = build_engine(config)
    started = time.monotonic()
    answered = engine.infer(rows)
    elapsed = time.monotonic() - started
    assert all("error" not in a.metadata for a in answered)
    return elapsed


@pytest.fixture(autouse=True)
def _compressed_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERMUX_RATE_WINDOW_S", str(WINDOW))


def test_requests_per_minute_is_never_exceeded_job_wide() -> None:
    with CountingChat() as server:
        assert isinstance(server, CountingChat)
        elapsed = _run(server, _rows(12, "hello "), requests_per_minute=4, num_workers=8)
        assert len(server.seen) == 12
        assert server.max_in_window(SPAN) <= 4
    assert elapsed >= 2 * WINDOW * 0.9  # 12 requests at 4 per window need three windows


def test_input_tokens_per_minute_is_corrected_from_reported_usage() -> None:
    # 38 characters: estimated 10 tokens; the server reports 19. Uncorrected, 6 requests (114 tokens)
    # would go out per window of a 60-token budget; corrected, 3 (57 tokens).
    text = "x" * 36
    assert estimate_tokens(len(text) + 2) == 10
    with CountingChat(chars_per_token=2) as server:
        assert isinstance(server, CountingChat)
        _run(server, _rows(9, text), input_tokens_per_minute=60, num_workers=1)
        assert {s.prompt_tokens for s in server.seen} == {19}
        assert server.max_in_window(SPAN, "prompt_tokens") <= 60


def test_output_tokens_per_minute_uses_reported_completions() -> None:
    # answers are "echo aNN": 2 completion tokens each; max_new_tokens 8 is reserved until usage arrives
    with CountingChat() as server:
        assert isinstance(server, CountingChat)
        elapsed = _run(server, _rows(8, "a"), output_tokens_per_minute=8, num_workers=1)
        assert {s.completion_tokens for s in server.seen} == {2}
        assert server.max_in_window(SPAN, "completion_tokens") <= 8
    assert elapsed >= WINDOW * 0.9  # 16 tokens at 8 per window: a second window was needed


def test_window_limiter_lets_an_oversized_request_through_alone() -> None:
    async def scenario() -> float:
        limiter = WindowLimiter(input_tokens=10, window=0.2)
        first = await limiter.acquire(50)  # bigger than the whole budget: allowed on an empty window
        assert first.input == 50
        started = time.monotonic()
        await limiter.acquire(1)
        return time.monotonic() - started

    assert asyncio.run(scenario()) >= 0.15  # waited for the big one to leave the window
