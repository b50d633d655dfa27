"""Limits read from the provider's reply headers pace a job below them, before any 429.

The servers are real (:class:`~tests.fakes.rate_limited.RateLimitedChat` on 127.0.0.1): a sliding window
that refuses what goes beyond the limit it announces. The 60 s "minute" is compressed to ``WINDOW``
seconds (``INFERMUX_RATE_WINDOW_S``) on both sides so a test takes seconds.
"""

from __future__ import annotations

import datetime

import pytest

from infermux.configs import GenerationParams, InferenceConfig, ModelParams, RemoteParams
from infermux.engines.registry import build_engine
from infermux.engines.remote.http.provider_limits import Announced, read_limit_headers
from infermux.types import Conversation
from tests.fakes.rate_limited import RateLimitedChat, go_duration

WINDOW = 2.0


@pytest.fixture(autouse=True)
def _compressed_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERMUX_RATE_WINDOW_S", str(WINDOW))


def _rows(n: int) -> list[Conversation]:
    return [Conversation.model_validate({"messages": [{"role": "user", "content": f"row {i}"}]}) for i in range(n)]


def _run(server: RateLimitedChat, n: int, **params: object) -> list[Conversation]:
    config = InferenceConfig(
        model=ModelParams(model_name="stub"),
        engine="REMOTE",
        generation=GenerationParams(max_new_tokens=8),
        remote_params=RemoteParams(api_url=server.url + "/v1", num_workers=16, **params),  # type: ignore[arg-type]
    )
    answered = build_engine(config).infer(_rows(n))
    assert [a.last_message.text for a in answered] == [f"echo row {i}" for i in range(n)]
    return answered


@pytest.mark.parametrize("style", ["openai", "anthropic"])
def test_a_job_paces_below_the_announced_limit_without_any_setting(style: str) -> None:
    # 600 per minute, of which another client of the key just used 480: 120 are left, and a 200-row
    # job must wait for the reset the headers announce instead of running into 429s.
    with RateLimitedChat(limit=600, window=WINDOW, others=480, style=style) as server:
        assert isinstance(server, RateLimitedChat)
        _run(server, 200)
        assert server.rejected == 0
        assert server.answered == 200


def test_without_the_headers_the_same_job_is_refused() -> None:
    # The control: with the headers ignored, the same job bursts past what is left and gets 429s
    # (answered all the same, after the waits the 429s ask for).
    with RateLimitedChat(limit=600, window=WINDOW, others=480) as server:
        assert isinstance(server, RateLimitedChat)
        _run(server, 200, use_provider_limits=False)
        assert server.rejected > 0


def test_the_announced_limit_paces_a_job_alone_on_its_key() -> None:
    # 40 per window and nobody else: the job keeps to 90 % of it (36) over any window.
    with RateLimitedChat(limit=40, window=WINDOW) as server:
        assert isinstance(server, RateLimitedChat)
        _run(server, 90)
        assert server.rejected == 0
        assert server.max_in_window() <= 40


def test_the_users_limit_wins_over_the_announced_one() -> None:
    with RateLimitedChat(limit=40, window=WINDOW) as server:
        assert isinstance(server, RateLimitedChat)
        _run(server, 30, requests_per_minute=10)
        assert server.rejected == 0
        # arrivals are measured by the server, a little after the client lets them go: a shorter span
        assert server.max_in_window(WINDOW * 0.75) <= 10


def test_headers_of_both_providers_are_read() -> None:
    openai = {
        "X-RateLimit-Limit-Requests": "5000",
        "x-ratelimit-remaining-requests": "4999",
        "x-ratelimit-reset-requests": "12ms",
        "x-ratelimit-limit-tokens": "160000",
        "x-ratelimit-remaining-tokens": "159976",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert read_limit_headers(openai) == {
        "requests": Announced(5000, 4999, pytest.approx(0.012)),  # type: ignore[arg-type]
        "tokens": Announced(160000, 159976, 360.0),
    }
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=30)
    anthropic = {}
    for name, limit in (("requests", 1000), ("tokens", 96000), ("input-tokens", 80000), ("output-tokens", 16000)):
        anthropic[f"anthropic-ratelimit-{name}-limit"] = str(limit)
        anthropic[f"anthropic-ratelimit-{name}-remaining"] = str(limit - 1)
        anthropic[f"anthropic-ratelimit-{name}-reset"] = soon.isoformat().replace("+00:00", "Z")
    found = read_limit_headers(anthropic)
    # Anthropic's "tokens" is the tighter of input and output: those two are read instead.
    assert set(found) == {"requests", "input_tokens", "output_tokens"}
    assert found["output_tokens"].limit == 16000 and found["output_tokens"].remaining == 15999
    assert 28 < (found["requests"].reset_s or 0) <= 30
    # Azure's "-1" (nothing reported) and a server without such headers announce nothing.
    assert read_limit_headers({"x-ratelimit-limit-tokens": "-1", "x-ratelimit-remaining-tokens": "-1"}) == {}
    assert read_limit_headers({"content-type": "application/json"}) == {}
    assert go_duration(0.02) == "20ms" and go_duration(360) == "6m0s"
