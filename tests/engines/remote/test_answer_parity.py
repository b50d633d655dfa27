"""For each protocol, the same answer read whole (``infer``) and streamed (``chat``) gets the same
finish_reason and usage: both paths go through ``FinishReason.parse`` and ``Usage``.

Replies and event sequences are written from each provider's API reference (OpenAI chat completions,
Anthropic Messages, Gemini generateContent / streamGenerateContent), including the ends that used to
differ between the two paths (a Gemini answer stopped for safety, a prompt blocked outright).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from infermux.configs import ModelParams, RemoteParams
from infermux.engines.remote.anthropic.engine import AnthropicInferenceEngine
from infermux.engines.remote.gemini.engine import GoogleGeminiInferenceEngine
from infermux.engines.remote.http.sse import SseEvent
from infermux.engines.remote.openai.format import reply as openai_reply
from infermux.engines.remote.openai.stream import ChatCompletionStream
from infermux.types import Conversation, FinishReason

CONV = Conversation.model_validate({"messages": [{"role": "user", "content": "Hi"}]})
KEYS = RemoteParams(api_key="k-parity-test")


def _streamed(decoder: Any, events: list[SseEvent]) -> Conversation:
    text = "".join(decoder.feed(e) for e in events)
    answered: Conversation = decoder.result()
    assert answered.last_message.text == text
    return answered


def _same(whole: Conversation, streamed: Conversation, reason: str) -> None:
    assert whole.last_message.text == streamed.last_message.text
    assert whole.metadata["finish_reason"] == streamed.metadata["finish_reason"] == reason
    assert whole.metadata.get("usage") == streamed.metadata.get("usage")
    assert FinishReason(reason).value == reason and type(whole.metadata["finish_reason"]) is str


@pytest.mark.parametrize("wire", ["stop", "length", "content_filter", "tool_calls", "STOP"])
def test_openai_chat(wire: str) -> None:
    usage = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    whole = openai_reply(CONV, {
        "model": "m", "usage": usage,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": wire}],
    })  # fmt: skip
    chunks = [
        {"model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]},
        {"model": "m", "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": wire}]},
        {"model": "m", "choices": [], "usage": usage},
    ]
    events = [SseEvent(json.dumps(c)) for c in chunks] + [SseEvent("[DONE]")]
    _same(whole, _streamed(ChatCompletionStream(CONV), events), wire.lower())


@pytest.mark.parametrize(
    ("wire", "reason"), [("end_turn", "stop"), ("max_tokens", "length"), ("refusal", "content_filter")]
)
def test_anthropic_messages(wire: str, reason: str) -> None:
    engine = AnthropicInferenceEngine(ModelParams(model_name="claude-test"), remote_params=KEYS)
    usage = {"input_tokens": 9, "output_tokens": 3, "cache_read_input_tokens": 5}
    whole = engine.parse_reply(CONV, {
        "type": "message", "model": "claude-test", "role": "assistant", "stop_reason": wire, "usage": usage,
        "content": [{"type": "text", "text": "Hi there"}],
    })  # fmt: skip
    events = [
        SseEvent(json.dumps({"type": "message_start", "message": {
            "model": "claude-test", "usage": {"input_tokens": 9, "output_tokens": 1, "cache_read_input_tokens": 5}}}),
            "message_start"),
        SseEvent(json.dumps({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hi "}})),
        SseEvent(json.dumps({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "there"}})),
        SseEvent(json.dumps({"type": "message_delta", "delta": {"stop_reason": wire}, "usage": {"output_tokens": 3}})),
        SseEvent(json.dumps({"type": "message_stop"})),
    ]  # fmt: skip
    streamed = _streamed(engine.stream_decoder(CONV), events)
    _same(whole, streamed, reason)
    # prompt_tokens counts the cache reads too, as OpenAI's does (and as genai-prices prices it): 9 + 5
    assert whole.metadata["usage"] == {
        "prompt_tokens": 14,
        "completion_tokens": 3,
        "total_tokens": 17,
        "cached_tokens": 5,
    }


@pytest.mark.parametrize(
    ("wire", "reason"),
    [("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
     ("PROHIBITED_CONTENT", "content_filter"), ("MALFORMED_FUNCTION_CALL", "tool_calls")],
)  # fmt: skip
def test_gemini_generate_content(wire: str, reason: str) -> None:
    engine = GoogleGeminiInferenceEngine(ModelParams(model_name="gemini-test"), remote_params=KEYS)
    usage = {"promptTokenCount": 7, "candidatesTokenCount": 2, "totalTokenCount": 9}

    def candidate(text: str, finish: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}}
        if finish:
            out["finishReason"] = finish
        return out

    whole = engine.parse_reply(CONV, {"candidates": [candidate("Hi you", wire)], "usageMetadata": usage,
                                      "modelVersion": "gemini-test"})  # fmt: skip
    events = [
        SseEvent(json.dumps({"candidates": [candidate("Hi ", None)], "modelVersion": "gemini-test"})),
        SseEvent(json.dumps({"candidates": [candidate("you", wire)], "usageMetadata": usage,
                             "modelVersion": "gemini-test"})),
    ]  # fmt: skip
    _same(whole, _streamed(engine.stream_decoder(CONV), events), reason)


def test_gemini_blocked_prompt_is_content_filter_both_ways() -> None:
    engine = GoogleGeminiInferenceEngine(ModelParams(model_name="gemini-test"), remote_params=KEYS)
    blocked = {
        "promptFeedback": {"blockReason": "SAFETY"},
        "usageMetadata": {"promptTokenCount": 7, "totalTokenCount": 7},
    }
    whole = engine.parse_reply(CONV, blocked)
    streamed = _streamed(engine.stream_decoder(CONV), [SseEvent(json.dumps(blocked))])
    assert whole.last_message.text == streamed.last_message.text == ""
    assert whole.metadata["finish_reason"] == streamed.metadata["finish_reason"] == "content_filter"
    assert whole.metadata["block_reason"] == streamed.metadata["block_reason"] == "SAFETY"
    assert whole.metadata["usage"] == streamed.metadata["usage"] == {
        "prompt_tokens": 7, "completion_tokens": 0, "total_tokens": 7
    }  # fmt: skip
