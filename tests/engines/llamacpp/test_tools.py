"""LLAMACPP tool calling on the real library and the default model (SmolLM2-135M, whose chat template
does not render tools: the Hermes system block is used)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("llama_cpp")

import jsonschema

from infermux.configs import GenerationParams, InferenceConfig, ModelParams
from infermux.configs.generation_params import GuidedDecodingParams
from infermux.engines.llamacpp.engine import LlamaCppInferenceEngine
from infermux.types import Conversation, Message, Role
from tests.engines.tool_data import SCHEMAS, TIME, WEATHER

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaCppInferenceEngine]:
    eng = LlamaCppInferenceEngine(
        ModelParams(model_name="smollm2-135m-instruct", model_kwargs={"n_ctx": 1024, "n_seq_max": 16}),
        generation_params=GenerationParams(max_new_tokens=96),
    )
    yield eng
    eng.close()


def run(
    engine: LlamaCppInferenceEngine, rows: list[Conversation], given: GenerationParams | None = None, **generation: Any
) -> list[Conversation]:
    config = InferenceConfig(model=engine.model_params, generation=given or GenerationParams(**generation))
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


def test_required_gives_schema_valid_calls_on_every_row_of_a_16_row_job(engine: LlamaCppInferenceEngine) -> None:
    rows = [ask(f"Question {i}: what is the weather or the time in city number {i}?") for i in range(16)]
    answers = run(engine, rows, max_new_tokens=64, tool_choice="required", parallel_tool_calls=False)
    for answer in answers:
        assert_valid_calls(answer, {"get_weather", "get_time"})


def test_a_named_function_is_the_one_called(engine: LlamaCppInferenceEngine) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    answers = run(engine, [ask("Weather in Paris?"), ask("Hello!")], max_new_tokens=64, tool_choice=named)
    for answer in answers:
        assert_valid_calls(answer, {"get_time"})
        assert len(answer.last_message.tool_calls or []) == 1


def test_auto_parses_hermes_markup_from_a_real_generation(engine: LlamaCppInferenceEngine) -> None:
    # A regex holds the model to Hermes markup, so the parse of a real generation is what is tested.
    markup = (
        r'<tool_call>\n\{"name": "get_weather", "arguments": \{"city": "[A-Z][a-z]{2,8}", "unit": "C"\}\}\n</tool_call>'
    )
    generation = GenerationParams(max_new_tokens=64, guided_decoding=GuidedDecodingParams(regex=markup))
    (answer,) = run(engine, [ask("What is the weather in Paris?")], generation)
    assert_valid_calls(answer, {"get_weather"})

    async def stream() -> Any:
        return [event async for event in engine.astream(ask("What is the weather in Paris?"), generation)]

    events = asyncio.run(stream())  # the markup is read into calls, not streamed as text
    assert_valid_calls(events[-1].conversation, {"get_weather"})
    assert "".join(event.delta for event in events) == "" and events[-1].conversation.last_message.text == ""


def test_three_turns_and_streaming(engine: LlamaCppInferenceEngine) -> None:
    generation = GenerationParams(max_new_tokens=48, tool_choice="required", parallel_tool_calls=False)
    (first,) = run(engine, [ask("What is the weather in Oslo?")], generation)
    assert_valid_calls(first, {"get_weather", "get_time"})
    call = (first.last_message.tool_calls or [])[0]
    follow = first.model_copy(
        update={"messages": [*first.messages, Message(role=Role.TOOL, content="4 C, rain", tool_call_id=call.id)]}
    )
    rendered = engine._prompt(follow)  # the call and its result are in the prompt
    assert not isinstance(rendered, Exception)
    text = engine._llama.detokenize(rendered).decode()
    assert "<tool_call>" in text and "<tool_response>\n4 C, rain\n</tool_response>" in text
    (second,) = run(engine, [follow], max_new_tokens=24, tool_choice="none")
    assert "error" not in second.metadata and second.last_message.tool_calls is None

    async def stream() -> Any:
        return [event async for event in engine.astream(ask("Weather in Rome?"), generation)]

    events = asyncio.run(stream())
    assert_valid_calls(events[-1].conversation, {"get_weather", "get_time"})


def test_forced_calls_with_pydantic_defs_and_refs(engine: LlamaCppInferenceEngine) -> None:
    from tests.engines.local.test_forced_schemas import ORDER
    from tests.engines.local.test_forced_schemas import TOOLS as DEF_TOOLS

    rows = [Conversation.model_validate({"messages": [{"role": "user", "content": "Order two apples to Oslo."}],
                                         "tools": [t.to_json_dict() for t in DEF_TOOLS[:1]]})]  # fmt: skip
    named = {"type": "function", "function": {"name": "place_order"}}
    for choice in ("required", named):
        (answer,) = run(engine, rows, max_new_tokens=160, tool_choice=choice, parallel_tool_calls=False)
        assert "error" not in answer.metadata, answer.metadata.get("error")
        (call,) = answer.last_message.tool_calls or []
        assert call.function.name == "place_order"
        jsonschema.validate(call.function.parsed_arguments(), ORDER)


def test_a_forced_call_cut_by_max_new_tokens_is_a_length_answer_without_its_json(
    engine: LlamaCppInferenceEngine,
) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    generation = GenerationParams(max_new_tokens=4, tool_choice=named)
    (answer,) = run(engine, [ask("Weather in Paris?")], generation)
    assert answer.metadata["finish_reason"] == "length" and "error" not in answer.metadata
    assert not answer.last_message.content and answer.last_message.tool_calls is None

    async def stream() -> Any:
        return [event async for event in engine.astream(ask("Weather in Rome?"), generation)]

    events = asyncio.run(stream())
    assert not "".join(e.delta for e in events)  # the call's JSON is not streamed as text
    final = events[-1].conversation
    assert final.metadata["finish_reason"] == "length" and not final.last_message.content
    assert final.last_message.tool_calls is None
