"""Every wait a provider asks for, in headers or in the body, is read in one place (issue 23, item 10).

A 429 whose reset time is only in the body (OpenRouter's ``error.metadata``, Google's ``RetryInfo``)
must be waited out once, not retried with random back-off that spends more of a free-tier quota.
"""

from __future__ import annotations

import datetime
import json
import time
from typing import Any

import pytest

from infermux.configs import GenerationParams, InferenceConfig, ModelParams, RemoteParams
from infermux.engines.registry import build_engine
from infermux.engines.remote.http.limits import body_retry_hint, retry_hint
from infermux.types import Conversation
from tests.fakes import FakeGemini, FakeOpenAIChat


def _b(data: Any) -> bytes:
    return json.dumps(data).encode()


def openrouter_429(reset_in_s: float) -> dict[str, Any]:
    """OpenRouter's rate-limit error: the limit's headers copied into ``error.metadata.headers``,
    ``X-RateLimit-Reset`` an epoch time in milliseconds."""
    reset_ms = int((time.time() + reset_in_s) * 1000)
    headers = {"X-RateLimit-Limit": "20", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset_ms)}
    return {"error": {"message": "Rate limit exceeded: free-models-per-min.", "code": 429,
                      "metadata": {"headers": headers}}}  # fmt: skip


def test_header_hints() -> None:
    assert retry_hint({"Retry-After": "3"}) == 3.0
    assert retry_hint({"retry-after-ms": "250"}) == 0.25
    assert retry_hint({"x-ratelimit-reset-tokens": "6m0s", "x-ratelimit-remaining-tokens": "0",
                       "x-ratelimit-reset-requests": "1s"}) == 360.0  # fmt: skip
    soon = str(int((time.time() + 30) * 1000))  # epoch milliseconds
    assert retry_hint({"X-RateLimit-Reset": soon}) == pytest.approx(30, abs=2)
    assert retry_hint({"X-RateLimit-Reset": str(int(time.time() + 30))}) == pytest.approx(30, abs=2)
    assert retry_hint({"RateLimit-Reset": "7"}) == 7.0
    when = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=20)).isoformat()
    anthropic = {"anthropic-ratelimit-requests-reset": when, "anthropic-ratelimit-requests-remaining": "0",
                 "anthropic-ratelimit-tokens-reset": when.replace("+00:00", "Z")}  # fmt: skip
    assert retry_hint(anthropic) == pytest.approx(20, abs=2)
    assert retry_hint({}) is None and retry_hint({"Retry-After": "soon"}) is None


@pytest.mark.parametrize(
    ("body", "seconds"),
    [
        ("openrouter", 500),  # built when the test runs: the reset is an epoch time
        ({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "Quota exceeded. Please retry in 4.2s.",
                    "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "4s"}]}}, 4),
        ([{"error": {"details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                  "retryDelay": {"seconds": 2, "nanos": 500000000}}]}}], 2.5),
        ({"error": {"message": "Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): "
                               "Limit 30000, Used 30000, Requested 500. Please try again in 1.5s.",
                    "type": "tokens", "code": "rate_limit_exceeded"}}, 1.5),
        ({"error": {"message": "Please try again in 1m30s.", "code": "rate_limit_exceeded"}}, 90),
        ({"error": {"code": "429", "message": "Requests exceeded. Please retry after 20 seconds."}}, 20),
        ({"error": {"message": "slow down", "retry_after": 3}}, 3),
        ({"error": {"message": "no hint here"}}, None),
    ],
)  # fmt: skip
def test_body_hints(body: Any, seconds: float | None) -> None:
    if body == "openrouter":
        body = openrouter_429(500)
    hint = body_retry_hint(_b(body))
    assert (hint is None) if seconds is None else hint == pytest.approx(seconds, abs=2 if seconds == 500 else 1.5)
    assert retry_hint({}, _b(body)) == (
        None if hint is None else pytest.approx(hint, abs=0.5)
    )  # the one entry point reads the body when headers say nothing
    assert retry_hint({"Retry-After": "9"}, _b(body)) == 9.0  # and headers first


def _remote(url: str, **remote: Any) -> Any:
    params = {"max_retries": 5, "retry_backoff_base": 0.01, "retry_backoff_max": 0.05, "num_workers": 1, **remote}
    return build_engine(
        InferenceConfig(
            model=ModelParams(model_name="stub"),
            engine="REMOTE",
            generation=GenerationParams(max_new_tokens=8),
            remote_params=RemoteParams(api_url=url + "/v1", **params),
        )
    )


def test_a_body_only_openrouter_reset_is_waited_out_once() -> None:
    # Retried at random back-off (0.01-0.05 s), the 1.2 s window would meet five more 429s; with the
    # hint, one wait and one retry.
    with FakeOpenAIChat() as server:
        body = openrouter_429(1.2)
        server.fail_next(429, body=body)
        rows = [Conversation.model_validate({"messages": [{"role": "user", "content": "hi"}]})]
        started = time.monotonic()
        [answer] = _remote(server.url).infer(rows)
        elapsed = time.monotonic() - started
        assert "error" not in answer.metadata
        assert len(server.requests) == 2
    assert elapsed >= 0.9


def test_a_gemini_retry_delay_in_the_body_is_waited_out_once() -> None:
    from infermux.engines.remote.gemini import GoogleGeminiInferenceEngine

    body = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "Resource has been exhausted",
                      "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}]}}  # fmt: skip
    with FakeGemini(api_key="k") as server:
        server.fail_next(429, body=body)
        eng = GoogleGeminiInferenceEngine(
            ModelParams(model_name="gemini-2.0-flash"),
            remote_params=RemoteParams(
                api_url=server.url, api_key="k", max_retries=5, retry_backoff_base=0.01, retry_backoff_max=0.05
            ),
        )
        started = time.monotonic()
        [answer] = eng.infer([Conversation.model_validate({"messages": [{"role": "user", "content": "hi"}]})])
        assert "error" not in answer.metadata and len(server.requests) == 2
    assert time.monotonic() - started >= 0.9
