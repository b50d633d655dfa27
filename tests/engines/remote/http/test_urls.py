"""Endpoint URLs from ``api_url``, for every protocol: bases, proxy paths, full endpoints, queries."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infermux.configs import ModelParams, RemoteParams
from infermux.engines.remote.anthropic.engine import AnthropicInferenceEngine
from infermux.engines.remote.gemini.engine import GoogleGeminiInferenceEngine
from infermux.engines.remote.http.urls import append_path, endpoint_url
from infermux.engines.remote.openai.format import chat_completions_url
from infermux.errors import ConfigError
from infermux.types import Conversation
from tests.fakes import FakeAnthropic
from tests.fakes._server import Handler

H = "http://127.0.0.1:8000"


def test_the_shared_helper_keeps_the_query_out_of_the_path() -> None:
    build = append_path("/messages", base="/v1")
    assert endpoint_url(f"{H}/api/proxy?token=abc123", build) == f"{H}/api/proxy/v1/messages?token=abc123"
    assert endpoint_url(f"{H}/v1/?a=1&b=2", build) == f"{H}/v1/messages?a=1&b=2"
    assert endpoint_url(f"{H}/v1/messages?x=1", build) == f"{H}/v1/messages?x=1"
    with pytest.raises(ValueError, match="absolute"):
        endpoint_url("localhost:8000/v1", build)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (H, f"{H}/v1/chat/completions"),
        (f"{H}/v1", f"{H}/v1/chat/completions"),
        (f"{H}/api/proxy?token=abc123", f"{H}/api/proxy/chat/completions?token=abc123"),
        (f"{H}/openai/deployments/d?api-version=2024-10-21", f"{H}/openai/deployments/d/chat/completions?api-version=2024-10-21"),
        (f"{H}/v1/chat/completions?token=t", f"{H}/v1/chat/completions?token=t"),
    ],
)  # fmt: skip
def test_openai_chat_completions(given: str, expected: str) -> None:
    assert chat_completions_url(given) == expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (H, f"{H}/v1/messages"),
        (f"{H}/v1/", f"{H}/v1/messages"),
        (f"{H}/api/proxy?token=abc123", f"{H}/api/proxy/v1/messages?token=abc123"),
        (f"{H}/api/proxy/v1/messages?token=abc123", f"{H}/api/proxy/v1/messages?token=abc123"),
        (f"{H}/v1/messages", f"{H}/v1/messages"),
    ],
)
def test_anthropic_messages(given: str, expected: str) -> None:
    engine = AnthropicInferenceEngine(ModelParams(model_name="claude-x"), remote_params=RemoteParams(api_url=given))
    assert engine.url == expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (H, f"{H}/v1beta/models/g:generateContent"),
        (f"{H}/v1?key=k", f"{H}/v1/models/g:generateContent?key=k"),
        (f"{H}/gw?token=t", f"{H}/gw/v1beta/models/g:generateContent?token=t"),
        (f"{H}/v1beta/models/{{model}}:generateContent?t=1", f"{H}/v1beta/models/g:generateContent?t=1"),
    ],
)
def test_gemini_generate_content(given: str, expected: str) -> None:
    params = RemoteParams(api_url=given, api_key="k")
    assert GoogleGeminiInferenceEngine(ModelParams(model_name="g"), remote_params=params).url == expected


def test_sglang_generate_keeps_the_query() -> None:
    from infermux.engines.remote.sglang import SGLangInferenceEngine

    for given in (f"{H}/v1?token=t", f"{H}?token=t", f"{H}/generate?token=t"):
        engine = SGLangInferenceEngine(
            ModelParams(model_name="m", chat_template="chat_ml"),
            remote_params=RemoteParams(api_url=given),
            tokenizer=object(),
        )
        assert engine.url == f"{H}/generate?token=t"


def test_a_relative_api_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="api_url"):
        AnthropicInferenceEngine(ModelParams(model_name="c"), remote_params=RemoteParams(api_url="localhost:1"))


class _ProxiedAnthropic(FakeAnthropic):
    """The Anthropic fake behind a gateway path that wants a token in the query."""

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [("POST", "/api/proxy/v1/messages", self._messages)]


@pytest.fixture
def proxied() -> Iterator[_ProxiedAnthropic]:
    with _ProxiedAnthropic(api_key="sk-ant-test") as server:
        yield server


def test_anthropic_behind_a_proxy_with_a_query_token(proxied: _ProxiedAnthropic) -> None:
    params = RemoteParams(api_url=f"{proxied.url}/api/proxy?token=abc123", api_key="sk-ant-test", max_retries=0)
    engine = AnthropicInferenceEngine(ModelParams(model_name="claude-x"), remote_params=params)
    conversation = Conversation.model_validate({"messages": [{"role": "user", "content": "hi"}]})
    (answered,) = engine.infer([conversation])
    assert "error" not in answered.metadata, answered.metadata
    (request,) = proxied.requests
    assert request.path == "/api/proxy/v1/messages" and request.query == {"token": "abc123"}
