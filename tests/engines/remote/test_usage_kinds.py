"""Usage as the providers bill it (issue 23, items 9 and 11).

* Reasoning tokens count where they are billed: Gemini's ``thoughtsTokenCount`` is billed at the output
  rate but left out of ``candidatesTokenCount``; our ``completion_tokens`` holds both (as OpenAI's holds
  ``reasoning_tokens``), so cost, ``--max-cost`` and the job's token totals count them.
* Absent usage stays absent: a reply without usage (Anthropic, Bedrock, SGLang, Gemini) has no
  ``metadata["usage"]`` and is priced as unknown, never as free.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from infermux.configs import GenerationParams, ModelParams, RemoteParams
from infermux.engines.remote.anthropic import AnthropicInferenceEngine
from infermux.engines.remote.bedrock.engine import parse_converse_response
from infermux.engines.remote.gemini.engine import GoogleGeminiInferenceEngine, parse_usage
from infermux.engines.remote.sglang import finish_reason
from infermux.jobs.cost import pricing_for
from infermux.samples import merge_replies
from infermux.types import Conversation, Message, Role, Usage
from tests.fakes import FakeAnthropic, FakeGemini
from tests.fakes.gemini import THOUGHTS_TOKENS

GEMINI_KEY = "gemini-test-key"


def conv(text: str = "hello there") -> Conversation:
    return Conversation(messages=[Message(role=Role.USER, content=text)])


@pytest.fixture(scope="module")
def gemini() -> Iterator[FakeGemini]:
    with FakeGemini(api_key=GEMINI_KEY) as server:
        yield server


def gemini_engine(url: str, model: str = "gemini-2.5-flash", **kwargs: Any) -> GoogleGeminiInferenceEngine:
    return GoogleGeminiInferenceEngine(
        ModelParams(model_name=model, model_kwargs=kwargs),
        generation_params=GenerationParams(max_new_tokens=40),
        remote_params=RemoteParams(api_url=url, api_key=GEMINI_KEY, max_retries=0),
    )


def test_gemini_thinking_tokens_are_completion_tokens_and_priced(gemini: FakeGemini) -> None:
    [plain] = gemini_engine(gemini.url).infer([conv()])
    [thinking] = gemini_engine(gemini.url, thinking_config={"thinkingBudget": 512}).infer([conv()])
    reported = gemini.requests[-1]  # what the server said: thoughts apart from the candidates
    assert reported.json["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 512}
    assert plain.usage is not None and thinking.usage is not None
    assert plain.usage.reasoning_tokens is None
    assert thinking.usage.reasoning_tokens == THOUGHTS_TOKENS
    assert thinking.usage.completion_tokens == plain.usage.completion_tokens + THOUGHTS_TOKENS
    assert thinking.usage.total_tokens == thinking.usage.prompt_tokens + thinking.usage.completion_tokens
    pricing = pricing_for("GOOGLE_GEMINI", "gemini-2.5-flash")
    assert pricing is not None
    expected = pricing.estimate(thinking.usage.prompt_tokens or 0, plain.usage.completion_tokens + THOUGHTS_TOKENS)
    assert thinking.metadata["cost_usd"] == pytest.approx(expected)
    assert thinking.metadata["cost_usd"] > plain.metadata["cost_usd"]


def test_gemini_usage_fields() -> None:
    usage = parse_usage(
        {
            "promptTokenCount": 10,
            "candidatesTokenCount": 5,
            "thoughtsTokenCount": 7,
            "toolUsePromptTokenCount": 3,
            "cachedContentTokenCount": 4,
            "totalTokenCount": 25,
        }
    )
    assert usage == Usage.of(13, 12, 25, cached_tokens=4, reasoning_tokens=7)
    # a reply whose answer is all thoughts: Google leaves the zero candidates count out
    assert parse_usage({"promptTokenCount": 3, "thoughtsTokenCount": 2, "totalTokenCount": 5}) == Usage.of(
        3, 2, 5, reasoning_tokens=2
    )
    assert parse_usage(None) is None and parse_usage({}) is None


def test_gemini_reply_without_usage_metadata_has_no_usage(gemini: FakeGemini) -> None:
    from infermux.engines.remote.gemini.engine import parse_candidate

    parts, metadata = parse_candidate(
        {"candidates": [{"content": {"parts": [{"text": "hi"}]}, "finishReason": "STOP"}]}
    )
    assert parts == [{"text": "hi"}] and "usage" not in metadata


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_reply_without_usage_is_unknown_not_free(stream: bool) -> None:
    with FakeAnthropic(report_usage=False) as server:
        eng = AnthropicInferenceEngine(
            ModelParams(model_name="claude-sonnet-4-5"),
            generation_params=GenerationParams(max_new_tokens=20),
            remote_params=RemoteParams(api_url=server.url, api_key="sk-ant-test", max_retries=0),
        )
        if stream:
            answer = asyncio.run(_final(eng, conv()))
        else:
            [answer] = eng.infer([conv()])
    assert answer.last_message.text
    assert "usage" not in answer.metadata and answer.usage is None
    assert "cost_usd" not in answer.metadata  # unknown, not $0


async def _final(eng: AnthropicInferenceEngine, conversation: Conversation) -> Conversation:
    final = None
    async for event in eng.stream(conversation):
        if event.final:
            final = event.conversation
    assert final is not None
    return final


def test_anthropic_usage_is_read_when_present() -> None:
    with FakeAnthropic() as server:
        eng = AnthropicInferenceEngine(
            ModelParams(model_name="claude-sonnet-4-5"),
            generation_params=GenerationParams(max_new_tokens=20),
            remote_params=RemoteParams(api_url=server.url, api_key="sk-ant-test", max_retries=0),
        )
        [answer] = eng.infer([conv()])
    assert answer.usage is not None and answer.usage.prompt_tokens and answer.usage.completion_tokens
    assert answer.metadata["cost_usd"] > 0


def test_bedrock_reply_without_usage_has_none() -> None:
    response = {"output": {"message": {"role": "assistant", "content": [{"text": "hi"}]}}, "stopReason": "end_turn"}
    answered = parse_converse_response(response, conv(), GenerationParams())
    assert answered.last_message.text == "hi" and answered.finish_reason == "stop"
    assert "usage" not in answered.metadata
    with_usage = parse_converse_response(
        {**response, "usage": {"inputTokens": 4, "outputTokens": 2, "totalTokens": 6}}, conv(), GenerationParams()
    )
    assert with_usage.metadata["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}


def test_a_partial_count_is_priced_as_unknown() -> None:
    pricing = pricing_for("ANTHROPIC", "claude-sonnet-4-5")
    assert pricing is not None
    assert pricing.cost({"completion_tokens": 10}) is None
    assert pricing.cost({"prompt_tokens": 10}) is None
    assert pricing.cost(None) is None and pricing.cost({}) is None
    assert pricing.cost({"prompt_tokens": 10, "completion_tokens": 0}) is not None


def test_n_answers_with_one_unknown_usage_leave_the_row_unknown() -> None:
    known = conv().with_reply("a", usage=Usage.of(3, 1))
    unknown = conv().with_reply("b")
    assert merge_replies(conv(), [known, known]).usage == Usage.of(6, 2)
    assert merge_replies(conv(), [known, unknown]).usage is None


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({"finish_reason": {"type": "stop", "matched": 151645}}, "stop"),
        ({"finish_reason": {"type": "length", "length": 8}}, "length"),
        ({"finish_reason": {"type": "abort", "message": "client disconnected"}}, "error"),
        ({"finish_reason": "FINISH_LENGTH(length=8)"}, "length"),
        ({"finish_reason": "FINISH_MATCHED_TOKEN"}, "stop"),
        ({"finish_reason": "stop"}, "stop"),
        ({"finish_reason": None}, None),
        ({}, None),
    ],
)
def test_sglang_finish_reasons_from_meta_info(meta: dict[str, Any], expected: str | None) -> None:
    reason = finish_reason(meta)
    assert (None if reason is None else reason.value) == expected


def test_openai_reasoning_tokens_inside_or_apart_from_completion_tokens() -> None:
    # OpenAI: reasoning_tokens are part of completion_tokens (total = prompt + completion)
    inside = {"prompt_tokens": 10, "completion_tokens": 50, "total_tokens": 60,
              "completion_tokens_details": {"reasoning_tokens": 40}}  # fmt: skip
    assert Usage.from_openai(inside) == Usage.of(10, 50, 60, reasoning_tokens=40)
    # a server that counts them apart (total = prompt + completion + reasoning): billed as output all the same
    apart = {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 60,
             "completion_tokens_details": {"reasoning_tokens": 40}}  # fmt: skip
    assert Usage.from_openai(apart) == Usage.of(10, 50, 60, reasoning_tokens=40)
