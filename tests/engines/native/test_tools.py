"""NATIVE tool calling on transformers and the default model (SmolLM2-135M, whose chat template does not
render tools: the Hermes system block is used); forced calls go through xgrammar."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("transformers")
pytest.importorskip("xgrammar")

import jsonschema

from infermux.configs import GenerationParams, InferenceConfig, ModelParams
from infermux.configs.generation_params import GuidedDecodingParams
from infermux.engines.native.engine import NativeTextInferenceEngine
from infermux.types import Conversation, Message, Role
from tests.engines.tool_data import SCHEMAS, TIME, WEATHER

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine() -> Iterator[NativeTextInferenceEngine]:
    eng = NativeTextInferenceEngine(ModelParams(model_name="smollm2-135m-instruct"))
    yield eng
    eng.close()


def run(engine: NativeTextInferenceEngine, rows: list[Conversation], **generation: Any) -> list[Conversation]:
    config = InferenceConfig(model=engine.model_params, generation=GenerationParams(**generation))
    return engine.infer(rows, config)


def ask(text: str) -> Conversation:
    return Conversation.model_validate({"messages": [{"role": "user", "content": text}], "tools": [WEATHER, TIME]})


def assert_valid_calls(answer: Conversation, names: set[str]) -> None:
    assert "error" not in answer.metadata, answer.metadata.get("error")
    calls = answer.last_message.tool_calls
    assert calls, f"no calls; the answer was {answer.last_message.content!r}"
    assert answer.metadata["finish_reason"] == "tool_calls" and answer.last_message.content is None
    for call in calls:
        assert call.function.name in names and call.id
        jsonschema.validate(call.function.parsed_arguments(), SCHEMAS[call.function.name])


def test_required_gives_schema_valid_calls_on_every_row_of_a_16_row_job(engine: NativeTextInferenceEngine) -> None:
    rows = [ask(f"Question {i}: what is the weather or the time in city number {i}?") for i in range(16)]
    plain = Conversation.model_validate({"messages": [{"role": "user", "content": "Say hi."}]})
    answers = run(engine, [*rows, plain], max_new_tokens=64, batch_size=8, tool_choice="required",
                  parallel_tool_calls=False)  # fmt: skip
    for answer in answers[:16]:
        assert_valid_calls(answer, {"get_weather", "get_time"})
    assert answers[16].last_message.tool_calls is None and answers[16].last_message.text  # no tools: plain text


def test_named_function_auto_markup_and_three_turns(engine: NativeTextInferenceEngine) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    (call_turn,) = run(engine, [ask("Weather in Paris?")], max_new_tokens=48, tool_choice=named)
    assert_valid_calls(call_turn, {"get_time"})

    markup = (
        r'<tool_call>\n\{"name": "get_weather", "arguments": \{"city": "[A-Z][a-z]{2,8}", "unit": "C"\}\}\n</tool_call>'
    )
    config = InferenceConfig(
        model=engine.model_params,
        generation=GenerationParams(max_new_tokens=64, guided_decoding=GuidedDecodingParams(regex=markup)),
    )
    (auto,) = engine.infer([ask("What is the weather in Paris?")], config)
    assert_valid_calls(auto, {"get_weather"})

    call = (call_turn.last_message.tool_calls or [])[0]
    result = Message(role=Role.TOOL, content="12:00", tool_call_id=call.id)
    follow = call_turn.model_copy(update={"messages": [*call_turn.messages, result]})
    text = engine.tokenizer.decode(engine._prompt_ids(follow))
    assert "<tool_call>" in text and "<tool_response>\n12:00\n</tool_response>" in text
    (answer,) = run(engine, [follow], max_new_tokens=16, tool_choice="none")
    assert "error" not in answer.metadata and answer.last_message.tool_calls is None


def test_streaming_a_forced_call(engine: NativeTextInferenceEngine) -> None:
    generation = GenerationParams(max_new_tokens=48, tool_choice="required", parallel_tool_calls=False)

    async def stream() -> Any:
        return [event async for event in engine.astream(ask("Weather in Rome?"), generation)]

    events = asyncio.run(stream())
    assert_valid_calls(events[-1].conversation, {"get_weather", "get_time"})


def test_forced_calls_with_pydantic_defs_and_refs_and_a_cut_call(engine: NativeTextInferenceEngine) -> None:
    from tests.engines.local.test_forced_schemas import ORDER
    from tests.engines.local.test_forced_schemas import TOOLS as DEF_TOOLS

    row = Conversation.model_validate({"messages": [{"role": "user", "content": "Order two apples to Oslo."}],
                                       "tools": [t.to_json_dict() for t in DEF_TOOLS[:1]]})  # fmt: skip
    (answer,) = run(engine, [row], max_new_tokens=160, tool_choice="required", parallel_tool_calls=False)
    assert "error" not in answer.metadata, answer.metadata.get("error")
    (call,) = answer.last_message.tool_calls or []
    jsonschema.validate(call.function.parsed_arguments(), ORDER)
    (cut,) = run(engine, [row], max_new_tokens=4, tool_choice="required")  # cut inside the call's JSON
    assert cut.metadata["finish_reason"] == "length" and "error" not in cut.metadata
    assert not cut.last_message.content and cut.last_message.tool_calls is None
