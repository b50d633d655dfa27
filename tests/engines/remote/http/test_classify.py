"""Permanent failures are not retried, retry hints in bodies are honoured: unit checks of
http/classify.py, then each protocol end to end against its fake."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from infermux.configs import ModelParams, RemoteParams
from infermux.engines.remote.anthropic.engine import AnthropicInferenceEngine
from infermux.engines.remote.gemini.engine import GoogleGeminiInferenceEngine
from infermux.engines.remote.http.classify import body_retry_hint, permanent_failure
from infermux.engines.remote.openai.openai import OpenAIInferenceEngine
from infermux.types import Conversation
from tests.fakes import QUOTA_BODY, Exchange, FakeAnthropic, FakeGemini, FakeOpenAIChat
from tests.fakes._server import default_responder

RETRY_INFO = {
    "error": {
        "code": 429,
        "status": "RESOURCE_EXHAUSTED",
        "message": "Resource has been exhausted (e.g. check quota).",
        "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "4s"}],
    }
}


def _b(obj: object) -> bytes:
    return json.dumps(obj).encode()


def conv(text: str) -> Conversation:
    return Conversation.model_validate({"messages": [{"role": "user", "content": text}]})


# ---------------------------------------------------------------------- unit


@pytest.mark.parametrize("code", ["insufficient_quota", "billing_hard_limit_reached", "project_spend_limit_exceeded"])
def test_openai_quota_codes_are_permanent_even_as_429(code: str) -> None:
    body = {"error": {"message": "quota", "type": "insufficient_quota", "code": code}}
    verdict = permanent_failure(429, _b(body))
    assert verdict is not None and verdict.kind == "quota_exceeded" and "billing" in verdict.advice


def test_other_permanent_failures_by_provider() -> None:
    anthropic_billing = {"type": "error", "error": {"type": "billing_error", "message": "Payment required"}}
    assert permanent_failure(402, _b(anthropic_billing)).kind == "quota_exceeded"  # type: ignore[union-attr]
    credit = {"type": "error", "error": {"type": "invalid_request_error",
                                         "message": "Your credit balance is too low to access the Anthropic API."}}  # fmt: skip
    assert permanent_failure(400, _b(credit)).kind == "quota_exceeded"  # type: ignore[union-attr]
    context = {
        "error": {"message": "This model's maximum context length is 8192 tokens.", "code": "context_length_exceeded"}
    }
    assert permanent_failure(400, _b(context)).kind == "context_length_exceeded"  # type: ignore[union-attr]
    too_long = {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "prompt is too long: 210000 tokens"},
    }
    assert permanent_failure(400, _b(too_long)).kind == "context_length_exceeded"  # type: ignore[union-attr]
    google = {"error": {"code": 400, "status": "FAILED_PRECONDITION",
                        "message": "Gemini API free tier is not available in your country. Please enable billing on your project."}}  # fmt: skip
    assert permanent_failure(400, _b(google)).kind == "quota_exceeded"  # type: ignore[union-attr]
    # Rate limits and overloads stay transient.
    rate = {"error": {"message": "Rate limit reached for gpt-4o", "type": "requests", "code": "rate_limit_exceeded"}}
    assert permanent_failure(429, _b(rate)) is None
    assert permanent_failure(429, _b(RETRY_INFO)) is None
    assert permanent_failure(529, _b({"type": "error", "error": {"type": "overloaded_error", "message": "x"}})) is None
    assert permanent_failure(500, b"<html>oops</html>") is None


def test_google_retry_info_in_the_body() -> None:
    assert body_retry_hint(_b(RETRY_INFO)) == 4.0
    assert body_retry_hint(_b([RETRY_INFO])) == 4.0  # Vertex wraps errors in a list
    half = {"error": {"details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.5s"}]}}
    assert body_retry_hint(_b(half)) == 0.5
    assert body_retry_hint(_b({"error": {"message": "no hint"}})) is None
    assert body_retry_hint(b"not json") is None


# ---------------------------------------------------------------------- end to end


@pytest.fixture
def openai_fake() -> Iterator[FakeOpenAIChat]:
    with FakeOpenAIChat(api_key="sk-test") as server:
        yield server


def _openai(url: str, **remote: object) -> OpenAIInferenceEngine:
    params = RemoteParams(api_url=url + "/v1", api_key="sk-test", num_workers=1, **remote)  # type: ignore[arg-type]
    return OpenAIInferenceEngine(ModelParams(model_name="gpt-4o-mini"), remote_params=params)


def test_openai_quota_429_fails_each_row_at_once(openai_fake: FakeOpenAIChat) -> None:
    openai_fake.fail_next(429, body=QUOTA_BODY, times=3)
    started = time.monotonic()
    answers = _openai(openai_fake.url).infer([conv(f"q{i}") for i in range(3)])
    assert time.monotonic() - started < 30  # generous under load; the bug waited 5 minutes per row
    assert len(openai_fake.requests) == 3  # one request per row: none retried
    for answer in answers:
        error = answer.metadata["error"]
        assert error["status"] == 429 and error["retryable"] is False and error["kind"] == "quota_exceeded"
        assert "You exceeded your current quota" in error["message"] and "key" in error["message"]


def test_a_context_length_400_is_not_retried(openai_fake: FakeOpenAIChat) -> None:
    body = {"error": {"message": "This model's maximum context length is 128000 tokens.", "type": "invalid_request_error",
                      "param": "messages", "code": "context_length_exceeded"}}  # fmt: skip
    openai_fake.fail_next(400, body=body)
    (answer,) = _openai(openai_fake.url, max_retries=3).infer([conv("long")])
    assert answer.metadata["error"]["kind"] == "context_length_exceeded" and len(openai_fake.requests) == 1


def test_a_200_with_no_choices_is_a_content_filter_finish(openai_fake: FakeOpenAIChat) -> None:
    blocked = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini", "choices": [],
               "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {"hate": {"filtered": True}}}]}  # fmt: skip
    openai_fake.fail_next(200, body=blocked)
    (answer,) = _openai(openai_fake.url, max_retries=3).infer([conv("blocked")])
    assert "error" not in answer.metadata and len(openai_fake.requests) == 1
    assert answer.metadata["finish_reason"] == "content_filter" and answer.last_message.content == ""


def test_the_rate_limit_budget_is_configurable(openai_fake: FakeOpenAIChat) -> None:
    rate = {
        "error": {"message": "Rate limit reached", "type": "requests", "param": None, "code": "rate_limit_exceeded"}
    }
    openai_fake.fail_next(429, body=rate, times=1000, headers={"Retry-After": "0.2"})
    started = time.monotonic()
    (answer,) = _openai(openai_fake.url, rate_limit_timeout=0.5).infer([conv("limited")])
    assert time.monotonic() - started < 30
    error = answer.metadata["error"]
    assert error["kind"] == "rate_limited" and error["retryable"] is True and 2 <= len(openai_fake.requests) <= 10


def test_anthropic_billing_errors_are_not_retried() -> None:
    with FakeAnthropic(api_key="sk-ant-test") as fake:
        fake.fail_next(400, "Your credit balance is too low to access the Anthropic API.")
        fake.fail_next(429, "Number of request tokens has exceeded your per-minute rate limit")
        params = RemoteParams(api_url=fake.url, api_key="sk-ant-test", max_retries=3, retry_backoff_base=0.01)
        engine = AnthropicInferenceEngine(ModelParams(model_name="claude-x"), remote_params=params)
        (broke,) = engine.infer([conv("a")])
        (limited,) = engine.infer([conv("b")])
    assert broke.metadata["error"]["kind"] == "quota_exceeded" and not broke.metadata["error"]["retryable"]
    assert "error" not in limited.metadata  # the rate limit was waited out, then answered
    assert len(fake.requests) == 3


def test_gemini_retry_delay_in_the_body_is_honoured_for_every_worker() -> None:
    answered_at: list[float] = []

    def timed(exchange: Exchange) -> str:
        answered_at.append(time.monotonic())
        return default_responder(exchange)

    with FakeGemini(api_key="k", responder=timed) as fake:
        fake.fail_next(429, body=RETRY_INFO)
        params = RemoteParams(api_url=fake.url, api_key="k", num_workers=1, retry_backoff_base=0.1)
        engine = GoogleGeminiInferenceEngine(ModelParams(model_name="gemini-2.0-flash"), remote_params=params)
        started = time.monotonic()
        (answer,) = engine.infer([conv("wait")])
        assert "error" not in answer.metadata
        assert len(fake.requests) == 2 and answered_at[0] - started >= 4.0
        # With many workers, the pause is shared: once the 429 is in, no worker sends until 4 s have passed
        # (requests already in flight then still complete at once).
        fake.clear()
        answered_at.clear()
        fake.fail_next(429, body=RETRY_INFO)
        engine = GoogleGeminiInferenceEngine(
            ModelParams(model_name="gemini-2.0-flash"), remote_params=params.model_copy(update={"num_workers": 4})
        )
        started = time.monotonic()
        answers = engine.infer([conv(f"w{i}") for i in range(12)])
        assert all("error" not in a.metadata for a in answers) and len(fake.requests) == 13
        offsets = [t - started for t in answered_at]
        assert not [t for t in offsets if 1.0 < t < 3.99], offsets
        assert max(offsets) >= 4.0
