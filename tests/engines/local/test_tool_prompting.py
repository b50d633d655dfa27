"""The shared tool prompting of NATIVE and LLAMACPP: Hermes rendering and parsing, the forced-call
schema (checked with jsonschema), and what a forced or free answer becomes."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from infermux.configs import GenerationParams
from infermux.engines.local.tool_prompting import (
    HERMES_SYSTEM,
    MAX_STRING,
    StreamedText,
    chat_inputs,
    constrained_generation,
    finish,
    forced_call_schema,
    renders_tools,
)
from infermux.types import Conversation

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}


def conversation(*extra: dict[str, Any], tools: list[dict] | None = None) -> Conversation:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Rome?"}, *extra]
    return Conversation.model_validate({"messages": messages, "tools": tools or [WEATHER, TIME]})


def test_a_template_without_tools_gets_a_hermes_system_block_and_markup_history() -> None:
    history = conversation(
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "content": "hot", "tool_call_id": "c1"},
    )  # fmt: skip
    messages, tools = chat_inputs(history, GenerationParams(), template_has_tools=False)
    assert tools is None and [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"].startswith("Be brief.\n\nYou may call one or more functions")
    assert json.dumps(WEATHER) in messages[0]["content"] and "<tools>" in HERMES_SYSTEM
    assert messages[2]["content"] == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
    assert messages[3]["content"] == "<tool_response>\nhot\n</tool_response>"


def test_a_template_with_tools_gets_them_and_none_offers_nothing() -> None:
    messages, tools = chat_inputs(conversation(), GenerationParams(), template_has_tools=True)
    assert tools == [WEATHER, TIME] and messages[0] == {"role": "system", "content": "Be brief."}
    assert renders_tools("{% if tools %}...{% endif %}") and not renders_tools("{{ messages }}")
    none = GenerationParams(tool_choice="none")
    assert chat_inputs(conversation(), none, template_has_tools=True)[1] is None
    assert chat_inputs(conversation(), none, template_has_tools=False)[0][0]["content"] == "Be brief."
    assert finish('<tool_call>{"name": "get_time", "arguments": {}}</tool_call>', conversation(), none)[1] is None


def test_forced_schemas_accept_exactly_valid_calls() -> None:
    tools = conversation().tools
    named = forced_call_schema(
        tools, GenerationParams(tool_choice={"type": "function", "function": {"name": "get_weather"}})
    )
    assert named is not None
    jsonschema.validate({"name": "get_weather", "arguments": {"city": "Rome"}}, named)
    for bad in ({"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": {}},
                {"name": "get_weather", "arguments": {"city": "x" * (MAX_STRING + 1)}}):  # fmt: skip
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, named)
    required = forced_call_schema(tools, GenerationParams(tool_choice="required"))
    assert required is not None and required["type"] == "array"
    jsonschema.validate(
        [{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": {"city": "a"}}], required
    )
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([], required)
    single = forced_call_schema(tools, GenerationParams(tool_choice="required", parallel_tool_calls=False))
    assert single is not None and "anyOf" in single
    assert forced_call_schema(tools, GenerationParams()) is None
    with pytest.raises(ValueError, match="not among"):
        forced_call_schema(tools, GenerationParams(tool_choice={"type": "function", "function": {"name": "nope"}}))


def test_constrained_generation_and_finish_read_forced_json_back() -> None:
    generation = GenerationParams(tool_choice="required")
    constrained = constrained_generation(conversation(), generation)
    assert constrained.guided_decoding is not None and constrained.guided_decoding.kind == "json"
    assert constrained_generation(conversation(), GenerationParams()) is not None
    text, calls = finish('[{"name": "get_weather", "arguments": {"city": "Rome"}}]', conversation(), generation)
    assert text is None and calls and calls[0].function.parsed_arguments() == {"city": "Rome"}
    assert calls[0].id and calls[0].id.startswith("call_")
    cut = '[{"name": "get_weather", "arguments": {"ci'
    # cut short (issue 23): neither calls nor the internal JSON as text; the engine's finish reason says length
    assert finish(cut, conversation(), generation) == (None, None)


def test_auto_parses_hermes_markup_and_parallel_false_keeps_one() -> None:
    text = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>\n'
            '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>')  # fmt: skip
    before, calls = finish(text, conversation(), GenerationParams())
    assert before == "Let me check." and [c.function.name for c in calls or []] == ["get_weather", "get_time"]
    _, one = finish(text, conversation(), GenerationParams(parallel_tool_calls=False))
    assert [c.function.name for c in one or []] == ["get_weather"]
    plain, none = finish("It is sunny.", conversation(), GenerationParams())
    assert plain == "It is sunny." and none is None
    broken = "<tool_call>{not json}</tool_call>"
    assert finish(broken, conversation(), GenerationParams()) == (broken, None)
    cut = 'Let me check.\n<tool_call>\n{"name": "get_weather", "argu'  # max_new_tokens inside the markup
    assert finish(cut, conversation(), GenerationParams()) == ("Let me check.", None)
    assert finish(cut[cut.index("<") :], conversation(), GenerationParams()) == (None, None)


@pytest.mark.parametrize("split", [1, 2, 3, 5, 64])
def test_a_streamed_answer_shows_its_text_not_its_calls_markup(split: int) -> None:
    answer = 'Let me check.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>'
    chunks = [answer[i : i + split] for i in range(0, len(answer), split)]
    shown = StreamedText(conversation(), GenerationParams())
    streamed = "".join(shown.feed(chunk) for chunk in chunks)
    text, calls = finish(answer, conversation(), GenerationParams())
    assert streamed == "Let me check.\n" and text == "Let me check." and calls
    assert shown.rest(text) == ""  # the final text is no more than what was shown (a call leaves nothing)


def test_held_text_that_was_not_a_call_comes_out_at_the_end() -> None:
    for answer in ("Use <tool", "A <tool_call>not json</tool_call> stays text", "a < b <tool_"):
        shown = StreamedText(conversation(), GenerationParams())
        streamed = "".join(shown.feed(ch) for ch in answer)
        text, calls = finish(answer, conversation(), GenerationParams())
        assert calls is None and streamed + shown.rest(text) == text == answer


def test_without_tools_offered_every_delta_passes() -> None:
    answer = "Markup <tool_call>{}</tool_call> is just text here."
    for conv, generation in ((conversation(), GenerationParams(tool_choice="none")),
                             (Conversation.model_validate({"messages": [{"role": "user", "content": "hi"}]}),
                              GenerationParams())):  # fmt: skip
        shown = StreamedText(conv, generation)
        assert "".join(shown.feed(ch) for ch in answer) == answer and shown.rest(answer) == ""
