"""ANTHROPIC tool calling and thinking against the Anthropic fake (tools, tool_choice, tool_use /
tool_result pairing, thinking blocks sent back with their signature, cache usage), in infer and streaming."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from infermux.configs import GenerationParams, ModelParams, RemoteParams
from infermux.engines.remote.anthropic.engine import AnthropicInferenceEngine
from infermux.engines.remote.anthropic.tools import THINKING_KEY
from infermux.types import Conversation, Message, Role
from tests.fakes import FakeAnthropic

KEY = "sk-ant-test"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=KEY, cache_read=5) as server:
        yield server


@pytest.fixture(autouse=True)
def _clean(fake: FakeAnthropic) -> None:
    fake.clear()


def _engine(
    fake: FakeAnthropic, thinking: bool = False, caching: bool | None = None, **generation: Any
) -> AnthropicInferenceEngine:
    kwargs = {"thinking": {"type": "enabled", "budget_tokens": 1024}} if thinking else {}
    return AnthropicInferenceEngine(
        ModelParams(model_name="claude-test", model_kwargs=kwargs),
        generation_params=GenerationParams(max_new_tokens=2048, **generation),
        remote_params=RemoteParams(api_url=fake.url, api_key=KEY, max_retries=1, anthropic_prompt_caching=caching),
    )


def _ask(text: str, tools: list[dict] | None = None) -> Conversation:
    return Conversation.model_validate({"messages": [{"role": "user", "content": text}], "tools": tools or [WEATHER]})


def _answer_calls(conversation: Conversation, *results: str) -> Conversation:
    calls = conversation.last_message.tool_calls or []
    extra = [Message(role=Role.TOOL, content=r, tool_call_id=c.id) for c, r in zip(calls, results, strict=True)]
    return Conversation.from_json(conversation.to_json()).model_copy(
        update={"messages": [*conversation.messages, *extra]}
    )


def _stream(engine: AnthropicInferenceEngine, conversation: Conversation) -> Conversation:
    async def run() -> Conversation:
        events = [event async for event in engine.astream(conversation)]
        assert events[-1].conversation is not None
        return events[-1].conversation

    return asyncio.run(run())


@pytest.mark.parametrize("streamed", [False, True])
def test_three_turns_user_call_tool_result_answer(fake: FakeAnthropic, streamed: bool) -> None:
    engine = _engine(fake)
    run = (lambda c: _stream(engine, c)) if streamed else (lambda c: engine.infer([c])[0])
    first = run(_ask("What does get_weather say for Paris?"))
    assert "error" not in first.metadata, first.metadata
    call_turn = first.last_message
    assert call_turn.content is None and call_turn.tool_calls
    assert call_turn.tool_calls[0].function.name == "get_weather"
    assert call_turn.tool_calls[0].function.parsed_arguments() == {"city": "text"}
    assert first.metadata["finish_reason"] == "tool_calls" and first.metadata["stop_reason"] == "tool_use"
    body = fake.requests[-1].json
    assert body["tools"] == [{"name": "get_weather", "description": "Current weather in a city.",
                              "input_schema": WEATHER["function"]["parameters"]}]  # fmt: skip
    assert "tool_choice" not in body

    second = run(_answer_calls(first, "18 C, sunny"))
    assert "error" not in second.metadata, second.metadata
    assert second.last_message.tool_calls is None and "18 C, sunny" in second.last_message.text
    assert second.metadata["finish_reason"] == "stop"
    sent = fake.requests[-1].json["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": call_turn.tool_calls[0].id, "name": "get_weather", "input": {"city": "text"}}
        ],
    }
    assert sent[2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": call_turn.tool_calls[0].id, "content": "18 C, sunny"}]}  # fmt: skip


@pytest.mark.parametrize("streamed", [False, True])
def test_any_makes_parallel_calls_answered_in_one_user_turn(fake: FakeAnthropic, streamed: bool) -> None:
    engine = _engine(fake, tool_choice="required")
    run = (lambda c: _stream(engine, c)) if streamed else (lambda c: engine.infer([c])[0])
    both = run(_ask("hello", [WEATHER, TIME]))
    calls = both.last_message.tool_calls or []
    assert [(c.function.name, c.function.parsed_arguments()) for c in calls] == [
        ("get_weather", {"city": "text"}),
        ("get_time", {}),
    ]
    assert fake.requests[-1].json["tool_choice"] == {"type": "any"}
    after = _engine(fake).infer([_answer_calls(both, "rain", "noon")])[0]
    assert "error" not in after.metadata, after.metadata.get("error")
    sent = fake.requests[-1].json["messages"]
    assert [b["type"] for b in sent[2]["content"]] == ["tool_result", "tool_result"]


def test_tool_choice_mapping(fake: FakeAnthropic) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    (out,) = _engine(fake, tool_choice=named, parallel_tool_calls=False).infer([_ask("hi", [WEATHER, TIME])])
    assert [c.function.name for c in out.last_message.tool_calls or []] == ["get_time"]
    assert fake.requests[-1].json["tool_choice"] == {
        "type": "tool", "name": "get_time", "disable_parallel_tool_use": True}  # fmt: skip
    (one,) = _engine(fake, tool_choice="required", parallel_tool_calls=False).infer([_ask("hi", [WEATHER, TIME])])
    assert [c.function.name for c in one.last_message.tool_calls or []] == ["get_weather"]
    (plain,) = _engine(fake, tool_choice="none").infer([_ask("get_weather please")])
    assert fake.requests[-1].json["tool_choice"] == {"type": "none"}
    assert plain.last_message.tool_calls is None and plain.last_message.text
    _engine(fake, tool_choice="auto").infer([_ask("hi")])
    assert fake.requests[-1].json["tool_choice"] == {"type": "auto"}


@pytest.mark.parametrize("streamed", [False, True])
def test_thinking_becomes_reasoning_and_goes_back_with_its_signature(fake: FakeAnthropic, streamed: bool) -> None:
    engine = _engine(fake, thinking=True)
    run = (lambda c: _stream(engine, c)) if streamed else (lambda c: engine.infer([c])[0])
    first = run(_ask("Use get_weather for Oslo"))
    assert "error" not in first.metadata, first.metadata
    assert first.last_message.reasoning_content == "The user wrote 1 turns."
    call_id = first.last_message.tool_calls[0].id  # type: ignore[index]
    assert first.metadata[THINKING_KEY][call_id][0]["signature"].startswith("sig_")
    assert "temperature" not in fake.requests[-1].json

    second = run(_answer_calls(first, "cold"))  # the fake refuses the turn without its signed thinking block
    assert "error" not in second.metadata, second.metadata
    assert fake.requests[-1].json["messages"][1]["content"][0]["type"] == "thinking"
    assert second.last_message.reasoning_content and "cold" in second.last_message.text

    stripped = _answer_calls(first, "cold").model_copy(update={"metadata": {}})
    (refused,) = engine.infer([stripped])
    assert "must start with a thinking block" in refused.metadata["error"]["message"]


def test_cache_tokens_count_as_prompt_tokens_and_are_reported_apart(fake: FakeAnthropic) -> None:
    # the fake reports 5 cache reads on every reply; no caching of our own (it would add writes)
    (out,) = _engine(fake, caching=False).infer([_ask("one two three")])
    usage = out.metadata["usage"]
    assert usage["cached_tokens"] == 5 and usage["cache_creation_tokens"] == 0
    assert (
        usage["prompt_tokens"] == 3 + 5 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    )
    assert _stream(_engine(fake, caching=False), _ask("one two three")).metadata["usage"] == usage


def test_history_without_ids_gets_paired_ids_and_bad_arguments_fail_the_row(fake: FakeAnthropic) -> None:
    # Calls carry an id (required since issue 24, as in Oumi's ToolCall); the tool turn without a
    # tool_call_id is paired with it.
    history = Conversation.model_validate(
        {
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "toolu_1_0", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
                {"role": "tool", "content": "hot"},
            ],
            "tools": [WEATHER],
        }
    )  # fmt: skip
    (out,) = _engine(fake).infer([history])
    assert "error" not in out.metadata, out.metadata
    sent = fake.requests[-1].json["messages"]
    assert sent[1]["content"][0]["id"] == sent[2]["content"][0]["tool_use_id"] == "toolu_1_0"
    bad = history.model_copy(
        update={"messages": [history.messages[0], Message.model_validate(
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "x", "function": {"name": "get_weather", "arguments": "{not json"}}]}), history.messages[2]]}
    )  # fmt: skip
    (failed,) = _engine(fake).infer([bad])
    assert (
        failed.metadata["error"]["kind"] == "invalid_input" and "not valid JSON" in failed.metadata["error"]["message"]
    )
