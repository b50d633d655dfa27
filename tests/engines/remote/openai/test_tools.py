"""Tool calling on the OpenAI-compatible family, against the OpenAI chat fake (validates tools,
tool_choice, parallel_tool_calls, the tool_calls / tool_call_id pairing of the history, ``user``)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from infermux.configs import GenerationParams, InferenceConfig, ModelParams, RemoteParams
from infermux.engines.registry import build_engine, engine_class
from infermux.engines.remote.openai.engine import RemoteInferenceEngine
from infermux.errors import UnsupportedParamError
from infermux.types import Conversation, Message, Role
from tests.fakes import FakeOpenAIChat

KEY = "sk-tools-test"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}},
}


@pytest.fixture(scope="module")
def fake() -> Any:
    with FakeOpenAIChat(api_key=KEY) as server:
        yield server


def _engine(fake: FakeOpenAIChat, name: str = "REMOTE", user_id: str | None = None, **generation: Any) -> Any:
    return engine_class(name)(
        ModelParams(model_name="gpt-test"),
        generation_params=GenerationParams(max_new_tokens=32, **generation),
        remote_params=RemoteParams(api_url=fake.url + "/v1", api_key=KEY, user_id=user_id),
    )


def _ask(text: str, tools: list[dict] | None = None) -> Conversation:
    return Conversation.model_validate({"messages": [{"role": "user", "content": text}], "tools": tools or [WEATHER]})


def _last_body(fake: FakeOpenAIChat) -> dict[str, Any]:
    return fake.requests[-1].json  # type: ignore[no-any-return]


def test_three_turns_user_call_tool_result_answer(fake: FakeOpenAIChat) -> None:
    engine = _engine(fake, user_id="user-42")
    (first,) = engine.infer([_ask("What is get_weather in Paris?")])
    call_turn = first.last_message
    assert "error" not in first.metadata, first.metadata
    assert call_turn.content is None and call_turn.tool_calls and call_turn.tool_calls[0].function.name == "get_weather"
    assert call_turn.tool_calls[0].function.parsed_arguments() == {"city": "text"}
    assert first.metadata["finish_reason"] == "tool_calls" and first.tools == _ask("x").tools
    body = _last_body(fake)
    assert body["tools"] == [WEATHER] and body["user"] == "user-42"
    assert "tool_choice" not in body and "parallel_tool_calls" not in body  # provider defaults

    result = Message(role=Role.TOOL, content="18 C, sunny", tool_call_id=call_turn.tool_calls[0].id)
    turn_two = Conversation.from_json(first.to_json()).model_copy(update={"messages": [*first.messages, result]})
    (second,) = engine.infer([turn_two])
    assert "error" not in second.metadata, second.metadata
    assert second.last_message.tool_calls is None and "18 C, sunny" in second.last_message.text
    sent = _last_body(fake)["messages"]
    assert sent[1]["tool_calls"][0]["id"] == sent[2]["tool_call_id"] == call_turn.tool_calls[0].id
    assert second.metadata["finish_reason"] == "stop"


def test_required_makes_parallel_calls_and_parallel_false_is_sent(fake: FakeOpenAIChat) -> None:
    (both,) = _engine(fake, tool_choice="required").infer([_ask("hello", [WEATHER, TIME])])
    assert [c.function.name for c in both.last_message.tool_calls or []] == ["get_weather", "get_time"]
    assert _last_body(fake)["tool_choice"] == "required"
    (one,) = _engine(fake, tool_choice="required", parallel_tool_calls=False).infer([_ask("hello", [WEATHER, TIME])])
    assert [c.function.name for c in one.last_message.tool_calls or []] == ["get_weather"]
    assert _last_body(fake)["parallel_tool_calls"] is False


def test_named_function_and_none(fake: FakeOpenAIChat) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    (out,) = _engine(fake, tool_choice=named).infer([_ask("hello", [WEATHER, TIME])])
    assert [c.function.name for c in out.last_message.tool_calls or []] == ["get_time"]
    assert _last_body(fake)["tool_choice"] == named
    (plain,) = _engine(fake, tool_choice="none").infer([_ask("get_weather please")])
    assert plain.last_message.tool_calls is None and plain.last_message.text


def test_a_tool_choice_that_does_not_fit_a_rows_tools_fails_that_row_only(fake: FakeOpenAIChat) -> None:
    before = len(fake.requests)
    plain = Conversation.model_validate({"messages": [{"role": "user", "content": "hi"}]})
    named = {"type": "function", "function": {"name": "get_time"}}
    rows = _engine(fake, tool_choice=named).infer([_ask("hello", [WEATHER, TIME]), _ask("hello"), plain])
    assert [c.function.name for c in rows[0].last_message.tool_calls or []] == ["get_time"]
    assert rows[1].metadata["error"]["kind"] == "invalid_input"
    assert "'get_time', which is not among the tools (get_weather)" in rows[1].metadata["error"]["message"]
    assert "error" not in rows[2].metadata and rows[2].last_message.text  # a job's choice is for rows with tools
    assert "tool_choice" not in _last_body(fake) and "tools" not in _last_body(fake)
    assert len(fake.requests) == before + 2  # the row whose tools lack the function was not sent


def test_streamed_calls_are_assembled_on_the_answer(fake: FakeOpenAIChat) -> None:
    engine = _engine(fake, tool_choice="required")

    async def run() -> list[Any]:
        return [event async for event in engine.astream(_ask("hi", [WEATHER, TIME]))]

    events = asyncio.run(run())
    final = events[-1].conversation
    assert final is not None and _last_body(fake)["stream"] is True
    calls = final.last_message.tool_calls or []
    assert [(c.function.name, c.function.parsed_arguments()) for c in calls] == [
        ("get_weather", {"city": "text"}),
        ("get_time", {"tz": "text"}),
    ]
    assert final.metadata["finish_reason"] == "tool_calls" and final.last_message.content is None


def test_oumi_shaped_jsonl_with_every_field_runs_and_the_output_loads_again(
    fake: FakeOpenAIChat, tmp_path: Path
) -> None:
    rows = [
        {  # a finished tool exchange, continued
            "conversation_id": "with-history",
            "messages": [
                {"id": "m0", "role": "system", "content": "Use tools.", "tool_calls": None, "tool_call_id": None,
                 "reasoning_content": None},
                {"role": "user", "content": "get_weather in Oslo?"},
                {"role": "assistant", "content": None, "reasoning_content": "Call the tool.", "tool_calls": [
                    {"id": "call_9", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}, "x-extra": 1}]},
                {"role": "tool", "content": "-3 C", "tool_call_id": "call_9"},
            ],
            "metadata": {"source": "oumi"},
            "tools": [{**WEATHER, "x-vendor": {"a": 1}}],
        },
        {"messages": [{"role": "user", "content": "get_weather in Rome?"}], "metadata": {}, "tools": [WEATHER]},
        {"conversation_id": None, "messages": [{"role": "user", "content": "Hi"}], "metadata": {}, "tools": None},
    ]  # fmt: skip
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    config = InferenceConfig(
        model=ModelParams(model_name="gpt-test"),
        engine="REMOTE",
        remote_params=RemoteParams(api_url=fake.url + "/v1", api_key=KEY),
        input_path=str(src),
        output_path=str(out),
    )
    engine = build_engine(config)
    engine.infer(inference_config=config)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(written) == 3
    for given, got in zip(rows, written, strict=True):
        assert (
            got["messages"][: len(given["messages"])] == Conversation.model_validate(given).to_json_dict()["messages"]
        )
        assert got.get("tools") == Conversation.model_validate(given).to_json_dict().get("tools")
        assert got["conversation_id"]  # every output row has a stable id, so it is valid next-turn input
    assert written[0]["conversation_id"] == "with-history" and written[0]["metadata"]["source"] == "oumi"
    assert written[0]["messages"][2]["tool_calls"][0]["x-extra"] == 1  # unknown keys kept
    assert "-3 C" in written[0]["messages"][-1]["content"]
    assert written[1]["messages"][-1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert written[1]["messages"][-1]["content"] is None
    again = [Conversation.from_json(line) for line in out.read_text().splitlines()]
    assert [c.to_json_dict() for c in again] == written
    # The answered file is the next turn's input: answer the call, rerun from it, everything runs.
    turn_two = []
    for conv in again:
        calls = conv.last_message.tool_calls or []
        results = [Message(role=Role.TOOL, content="21 C", tool_call_id=c.id) for c in calls]
        turn_two.append(conv.model_copy(update={"messages": [*conv.messages, *results]}))
    src2 = tmp_path / "turn2.jsonl"
    src2.write_text("".join(c.to_json() + "\n" for c in turn_two))
    config2 = config.model_copy(update={"input_path": str(src2), "output_path": str(tmp_path / "out2.jsonl")})
    engine.infer(inference_config=config2)
    assert engine.last_report is not None and engine.last_report.failed == 0
    final = [Conversation.from_json(line) for line in (tmp_path / "out2.jsonl").read_text().splitlines()]
    assert [c.conversation_id for c in final] == [c.conversation_id for c in again]
    assert "21 C" in final[1].last_message.text


def test_engine_without_tools_warns_once_before_any_row_and_strict_refuses(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(_ask(f"q{i}").to_json() + "\n" for i in range(3)))
    config = InferenceConfig(model=ModelParams(model_name="m"), engine="ECHO", input_path=str(src))
    with caplog.at_level(logging.WARNING, logger="infermux"):
        out = build_engine(config).infer(inference_config=config)
    assert len(out) == 3
    warnings = [r.getMessage() for r in caplog.records if "tool calling" in r.getMessage()]
    assert warnings == ["EchoEngine does not support tools in the input (tool calling); it is ignored. "
                        "Set strict: true (or --strict) to make this an error."]  # fmt: skip
    strict = config.model_copy(update={"strict": True, "output_path": str(tmp_path / "o.jsonl")})
    with pytest.raises(UnsupportedParamError, match="tool calling"):
        build_engine(strict).infer(inference_config=strict)
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "o.jsonl.partial.jsonl").exists()
    with pytest.raises(UnsupportedParamError, match="tool_choice"):
        build_engine(strict.model_copy(update={"generation": GenerationParams(tool_choice="required")}))


def test_bad_history_is_the_servers_400_not_a_crash(fake: FakeOpenAIChat) -> None:
    orphan = Conversation.model_validate(
        {"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "r", "tool_call_id": "nope"}]}
    )
    engine: RemoteInferenceEngine = _engine(fake)
    (out,) = engine.infer([orphan])
    assert (
        out.metadata["error"]["status"] == 400
        and "preceding message with 'tool_calls'" in out.metadata["error"]["message"]
    )
