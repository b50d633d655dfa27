"""GOOGLE_GEMINI function calling against the Gemini fake (functionDeclarations, functionCallingConfig
modes, functionCall / functionResponse pairing by name, thought parts and thought signatures), in
infer and streaming."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from infermux.configs import GenerationParams, ModelParams, RemoteParams
from infermux.engines.remote.gemini.engine import GoogleGeminiInferenceEngine
from infermux.engines.remote.gemini.tools import SIGNATURES_KEY
from infermux.types import Conversation, Message, Role
from tests.fakes import FakeGemini

KEY = "gemini-test-key"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeGemini]:
    with FakeGemini(api_key=KEY) as server:
        yield server


@pytest.fixture(autouse=True)
def _clean(fake: FakeGemini) -> None:
    fake.clear()


def _engine(fake: FakeGemini, thinking: bool = False, **generation: Any) -> GoogleGeminiInferenceEngine:
    kwargs = {"thinking_config": {"includeThoughts": True}} if thinking else {}
    return GoogleGeminiInferenceEngine(
        ModelParams(model_name="gemini-2.5-flash", model_kwargs=kwargs),
        generation_params=GenerationParams(max_new_tokens=256, **generation),
        remote_params=RemoteParams(api_url=fake.url, api_key=KEY, max_retries=1),
    )


def _ask(text: str, tools: list[dict] | None = None) -> Conversation:
    return Conversation.model_validate({"messages": [{"role": "user", "content": text}], "tools": tools or [WEATHER]})


def _answer_calls(conversation: Conversation, *results: str) -> Conversation:
    calls = conversation.last_message.tool_calls or []
    extra = [Message(role=Role.TOOL, content=r, tool_call_id=c.id) for c, r in zip(calls, results, strict=True)]
    return Conversation.from_json(conversation.to_json()).model_copy(
        update={"messages": [*conversation.messages, *extra]}
    )


def _runner(engine: GoogleGeminiInferenceEngine, streamed: bool) -> Any:
    async def stream(conversation: Conversation) -> Conversation:
        events = [event async for event in engine.astream(conversation)]
        assert events[-1].conversation is not None
        return events[-1].conversation

    if streamed:
        return lambda c: asyncio.run(stream(c))
    return lambda c: engine.infer([c])[0]


@pytest.mark.parametrize("streamed", [False, True])
def test_three_turns_user_call_function_response_answer(fake: FakeGemini, streamed: bool) -> None:
    run = _runner(_engine(fake), streamed)
    first = run(_ask("What does get_weather say for Paris?"))
    assert "error" not in first.metadata, first.metadata.get("error")
    call_turn = first.last_message
    assert call_turn.content is None and call_turn.tool_calls
    call = call_turn.tool_calls[0]
    assert call.function.name == "get_weather" and call.function.parsed_arguments() == {"city": "text"}
    assert call.id and call.id.startswith("call_") and first.metadata["finish_reason"] == "tool_calls"
    body = fake.requests[-1].json
    assert body["tools"] == [{"functionDeclarations": [{"name": "get_weather", "description": "Current weather in a city.",
        "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}, "propertyOrdering": ["city"],
                       "required": ["city"]}}]}]  # fmt: skip
    assert "toolConfig" not in body

    second = run(_answer_calls(first, '{"temperature": "18 C"}'))
    assert "error" not in second.metadata, second.metadata.get("error")
    assert second.last_message.tool_calls is None and "18 C" in second.last_message.text
    contents = fake.requests[-1].json["contents"]
    assert contents[1] == {
        "role": "model",
        "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "text"}}}],
    }
    assert contents[2] == {"role": "user", "parts": [
        {"functionResponse": {"name": "get_weather", "response": {"temperature": "18 C"}}}]}  # fmt: skip


def test_call_ids_are_stable_across_runs(fake: FakeGemini) -> None:
    engine = _engine(fake, tool_choice="required")
    (a,) = engine.infer([_ask("hi")])
    (b,) = engine.infer([_ask("hi")])
    assert a.last_message.tool_calls == b.last_message.tool_calls


@pytest.mark.parametrize("streamed", [False, True])
def test_any_makes_parallel_calls_answered_in_one_turn(fake: FakeGemini, streamed: bool) -> None:
    run = _runner(_engine(fake, tool_choice="required"), streamed)
    both = run(_ask("hello", [WEATHER, TIME]))
    calls = both.last_message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "get_time"] and len({c.id for c in calls}) == 2
    assert fake.requests[-1].json["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert "parameters" not in fake.requests[-1].json["tools"][0]["functionDeclarations"][1]  # no-argument function
    (after,) = _engine(fake).infer([_answer_calls(both, "rain", "noon")])
    assert "error" not in after.metadata, after.metadata.get("error")
    parts = fake.requests[-1].json["contents"][2]["parts"]
    assert [p["functionResponse"]["name"] for p in parts] == ["get_weather", "get_time"]
    assert parts[0]["functionResponse"]["response"] == {"result": "rain"}


def test_modes_named_function_none_and_parallel_false(fake: FakeGemini) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    (out,) = _engine(fake, tool_choice=named).infer([_ask("hi", [WEATHER, TIME])])
    assert [c.function.name for c in out.last_message.tool_calls or []] == ["get_time"]
    assert fake.requests[-1].json["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_time"]}}  # fmt: skip
    (plain,) = _engine(fake, tool_choice="none").infer([_ask("get_weather please")])
    assert fake.requests[-1].json["toolConfig"] == {"functionCallingConfig": {"mode": "NONE"}}
    assert plain.last_message.tool_calls is None and plain.last_message.text
    (one,) = _engine(fake, tool_choice="required", parallel_tool_calls=False).infer([_ask("hi", [WEATHER, TIME])])
    assert len(one.last_message.tool_calls or []) == 1


@pytest.mark.parametrize("streamed", [False, True])
def test_thoughts_become_reasoning_and_signatures_go_back(fake: FakeGemini, streamed: bool) -> None:
    run = _runner(_engine(fake, thinking=True), streamed)
    first = run(_ask("Use get_weather for Oslo"))
    assert "error" not in first.metadata, first.metadata.get("error")
    assert first.last_message.reasoning_content == "Thinking about 1 turns."
    call_id = first.last_message.tool_calls[0].id  # type: ignore[index]
    assert first.metadata[SIGNATURES_KEY][call_id]
    second = run(_answer_calls(first, "cold"))  # the fake refuses a call turn without its signature
    assert "error" not in second.metadata, second.metadata.get("error")
    assert fake.requests[-1].json["contents"][1]["parts"][0]["thoughtSignature"]
    (refused,) = _engine(fake, thinking=True).infer([_answer_calls(first, "cold").model_copy(update={"metadata": {}})])
    assert "missing a thought_signature" in refused.metadata["error"]["message"]


def test_a_tool_result_without_a_call_is_an_invalid_row(fake: FakeGemini) -> None:
    conversation = Conversation(messages=[Message(role=Role.USER, content="hi"), Message(role=Role.TOOL, content="1")])
    (out,) = _engine(fake).infer([conversation])
    assert out.metadata["error"]["kind"] == "invalid_input" and fake.requests == []
