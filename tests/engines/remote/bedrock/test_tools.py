"""BEDROCK tool use with botocore's Stubber: toolConfig, toolUse / toolResult blocks and reasoning are
checked by botocore against the bundled bedrock-runtime service model and compared with the Converse
shapes from the API reference."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("boto3")

from botocore.stub import ANY, Stubber

from infermux.configs import GenerationParams, ModelParams, RemoteParams
from infermux.engines.remote.bedrock.engine import BedrockInferenceEngine
from infermux.engines.remote.bedrock.tools import REASONING_KEY
from infermux.types import Conversation, Message, Role

MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather.", "parameters": SCHEMA}}
TIME = {"type": "function", "function": {"name": "get_time"}}
SPECS = [
    {"toolSpec": {"name": "get_weather", "description": "Weather.", "inputSchema": {"json": SCHEMA}}},
    {"toolSpec": {"name": "get_time", "inputSchema": {"json": {"type": "object", "properties": {}}}}},
]


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEFAKEFAKE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def make(**generation: Any) -> BedrockInferenceEngine:
    return BedrockInferenceEngine(
        ModelParams(model_name=MODEL),
        generation_params=GenerationParams(max_new_tokens=64, **generation),
        remote_params=RemoteParams(num_workers=1),
    )


@pytest.fixture
def engine() -> Iterator[BedrockInferenceEngine]:
    eng = make()
    yield eng
    eng.close()


def answer(*content: dict[str, Any], stop: str = "tool_use") -> dict[str, Any]:
    return {
        "output": {"message": {"role": "assistant", "content": list(content)}},
        "stopReason": stop,
        "usage": {"inputTokens": 20, "outputTokens": 9, "totalTokens": 29, "cacheReadInputTokens": 4},
        "metrics": {"latencyMs": 7},
    }


def use(call_id: str, name: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"toolUse": {"toolUseId": call_id, "name": name, "input": value}}


def ask(text: str, tools: list[dict] | None = None) -> Conversation:
    return Conversation.model_validate({"messages": [{"role": "user", "content": text}], "tools": tools or [WEATHER]})


def expected(messages: Any, tool_config: Any) -> dict[str, Any]:
    return {"modelId": MODEL, "messages": messages, "inferenceConfig": ANY, "toolConfig": tool_config}


def test_three_turns_user_call_tool_result_answer(engine: BedrockInferenceEngine) -> None:
    first_turn = [{"role": "user", "content": [{"text": "Weather in Paris?"}]}]
    with Stubber(engine.client) as stub:
        stub.add_response(
            "converse",
            answer(use("tooluse_a1", "get_weather", {"city": "Paris"})),
            expected(first_turn, {"tools": SPECS[:1]}),
        )
        [first] = engine.infer([ask("Weather in Paris?")])
        stub.assert_no_pending_responses()
    assert "error" not in first.metadata, first.metadata.get("error")
    calls = first.last_message.tool_calls or []
    assert [(c.id, c.function.name, c.function.parsed_arguments()) for c in calls] == [
        ("tooluse_a1", "get_weather", {"city": "Paris"})
    ]
    assert first.last_message.content is None and first.metadata["finish_reason"] == "tool_calls"
    assert first.metadata["usage"]["cached_tokens"] == 4

    follow = Conversation.from_json(first.to_json())
    follow = follow.model_copy(
        update={"messages": [*follow.messages, Message(role=Role.TOOL, content='{"c": 18}', tool_call_id="tooluse_a1")]}
    )
    history = [
        *first_turn,
        {"role": "assistant", "content": [use("tooluse_a1", "get_weather", {"city": "Paris"})]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "tooluse_a1", "content": [{"json": {"c": 18}}]}}]},
    ]
    with Stubber(engine.client) as stub:
        stub.add_response(
            "converse", answer({"text": "18 C."}, stop="end_turn"), expected(history, {"tools": SPECS[:1]})
        )
        [second] = engine.infer([follow])
        stub.assert_no_pending_responses()
    assert second.last_message.text == "18 C." and second.last_message.tool_calls is None
    assert second.metadata["finish_reason"] == "stop"


def test_parallel_calls_and_their_results_in_one_user_turn(engine: BedrockInferenceEngine) -> None:
    eng = make(tool_choice="required")
    calls = answer(use("t1", "get_weather", {"city": "Oslo"}), use("t2", "get_time", {}))
    with Stubber(eng.client) as stub:
        stub.add_response("converse", calls, expected(ANY, {"tools": SPECS, "toolChoice": {"any": {}}}))
        [both] = eng.infer([ask("hi", [WEATHER, TIME])])
    assert [c.id for c in both.last_message.tool_calls or []] == ["t1", "t2"]
    results = [Message(role=Role.TOOL, content="rain"), Message(role=Role.TOOL, content="noon")]  # no ids: in order
    follow = both.model_copy(update={"messages": [*both.messages, *results]})
    tail = {"role": "user", "content": [
        {"toolResult": {"toolUseId": "t1", "content": [{"text": "rain"}]}},
        {"toolResult": {"toolUseId": "t2", "content": [{"text": "noon"}]}},
    ]}  # fmt: skip
    with Stubber(engine.client) as stub:
        stub.add_response("converse", answer({"text": "ok"}, stop="end_turn"), expected([ANY, ANY, tail], ANY))
        [done] = engine.infer([follow])
        stub.assert_no_pending_responses()
    assert done.last_message.text == "ok"
    eng.close()


def test_named_tool_none_and_parallel_false() -> None:
    named = make(tool_choice={"type": "function", "function": {"name": "get_time"}}, parallel_tool_calls=False)
    two = answer(use("t1", "get_time", {}), use("t2", "get_time", {}))
    with Stubber(named.client) as stub:
        stub.add_response(
            "converse", two, expected(ANY, {"tools": SPECS, "toolChoice": {"tool": {"name": "get_time"}}})
        )
        [out] = named.infer([ask("hi", [WEATHER, TIME])])
    assert [c.id for c in out.last_message.tool_calls or []] == ["t1"]  # parallel_tool_calls false keeps one
    none = make(tool_choice="none")
    with Stubber(none.client) as stub:  # no toolConfig at all: Converse has no "none" choice
        stub.add_response(
            "converse",
            answer({"text": "hi"}, stop="end_turn"),
            {"modelId": MODEL, "messages": ANY, "inferenceConfig": ANY},
        )
        [plain] = none.infer([ask("hi")])
        stub.assert_no_pending_responses()
    assert plain.last_message.text == "hi"


def test_reasoning_becomes_reasoning_content_and_goes_back_signed(engine: BedrockInferenceEngine) -> None:
    thought = {"reasoningContent": {"reasoningText": {"text": "Need the weather.", "signature": "sig-1"}}}
    with Stubber(engine.client) as stub:
        stub.add_response("converse", answer(thought, use("t9", "get_weather", {"city": "Rome"})), expected(ANY, ANY))
        [first] = engine.infer([ask("Rome?")])
    assert first.last_message.reasoning_content == "Need the weather."
    assert first.metadata[REASONING_KEY]["t9"] == [thought]
    follow = Conversation.from_json(first.to_json())
    follow = follow.model_copy(
        update={"messages": [*follow.messages, Message(role=Role.TOOL, content="hot", tool_call_id="t9")]}
    )
    sent_back = {"role": "assistant", "content": [thought, use("t9", "get_weather", {"city": "Rome"})]}
    with Stubber(engine.client) as stub:
        stub.add_response("converse", answer({"text": "Hot."}, stop="end_turn"), expected([ANY, sent_back, ANY], ANY))
        [second] = engine.infer([follow])
        stub.assert_no_pending_responses()
    assert second.last_message.text == "Hot."
