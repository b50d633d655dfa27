"""The shared tool-calling pieces of template-rendering engines: template messages, the schema that
forces a call and reading it back, Hermes markup."""

from __future__ import annotations

import json

import pytest

from infermux.configs import GenerationParams
from infermux.engines.tool_calls import (
    calls_from_forced,
    forced_schema,
    parse_hermes,
    template_messages,
    template_tools,
    tools_key,
)
from infermux.types import Conversation, Tool

WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
NOW = {"type": "function", "function": {"name": "now"}}
TOOLS = [Tool.model_validate(WEATHER), Tool.model_validate(NOW)]


def test_template_messages_decode_arguments_and_keep_call_ids() -> None:
    conv = Conversation.model_validate(
        {
            "tools": [WEATHER],
            "messages": [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
                    {"id": "c2", "function": {"name": "get_weather", "arguments": "not json"}},
                ]},
                {"role": "tool", "tool_call_id": "c1", "content": "-3 C"},
            ],
        }
    )  # fmt: skip
    messages = template_messages(conv)
    assert messages[1]["content"] == ""
    assert [c["function"]["arguments"] for c in messages[1]["tool_calls"]] == [{"city": "Oslo"}, "not json"]
    assert messages[2] == {"role": "tool", "content": "-3 C", "tool_call_id": "c1"}
    assert template_tools(conv) == [WEATHER]
    plain = Conversation.model_validate({"messages": [{"role": "user", "content": "x"}]})
    assert template_tools(plain) is None and tools_key(plain) != tools_key(conv)


def test_named_function_forces_its_parameters_and_reads_them_back() -> None:
    gen = GenerationParams(tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert forced_schema(TOOLS, gen) == WEATHER["function"]["parameters"]
    (call,) = calls_from_forced('{"city": "Rome"}', gen)
    assert call.function.name == "get_weather" and call.function.parsed_arguments() == {"city": "Rome"}
    assert call.id and call.id.startswith("call_")
    missing = GenerationParams(tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(ValueError, match="nope"):
        forced_schema(TOOLS, missing)


def test_required_forces_a_list_of_calls_one_tool_each() -> None:
    schema = forced_schema(TOOLS, GenerationParams(tool_choice="required"))
    assert schema is not None and schema["type"] == "array" and schema["minItems"] == 1 and "maxItems" not in schema
    names = [option["properties"]["name"]["enum"] for option in schema["items"]["anyOf"]]
    assert names == [["get_weather"], ["now"]]
    assert schema["items"]["anyOf"][1]["properties"]["parameters"] == {"type": "object", "properties": {}}
    single = forced_schema(TOOLS, GenerationParams(tool_choice="required", parallel_tool_calls=False))
    assert single is not None and single["maxItems"] == 1
    text = json.dumps([{"name": "now", "parameters": {}}, {"name": "get_weather", "parameters": {"city": "Oslo"}}])
    calls = calls_from_forced(text, GenerationParams(tool_choice="required"))
    assert [(c.function.name, c.function.parsed_arguments()) for c in calls] == [
        ("now", {}),
        ("get_weather", {"city": "Oslo"}),
    ]
    with pytest.raises(ValueError):
        calls_from_forced('[{"name": "now", "param', GenerationParams(tool_choice="required"))


@pytest.mark.parametrize("choice", [None, "auto", "none"])
def test_free_choice_forces_nothing(choice: str | None) -> None:
    assert forced_schema(TOOLS, GenerationParams(tool_choice=choice)) is None
    assert forced_schema(None, GenerationParams(tool_choice="required")) is None


def test_hermes_markup() -> None:
    text = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    content, calls = parse_hermes(text + '<tool_call>{"name": "now", "arguments": {}}</tool_call>')
    assert content == "Let me check."
    assert [(c.function.name, c.function.parsed_arguments()) for c in calls or []] == [
        ("get_weather", {"city": "Paris"}),
        ("now", {}),
    ]
    assert parse_hermes("no calls here") == ("no calls here", None)
    broken = '<tool_call>{"name": "get_weather", "argu'
    assert parse_hermes(broken) == (broken, None)  # cut short: stays text
    _, unterminated = parse_hermes('<tool_call>{"name": "now", "arguments": {}}')
    assert unterminated is not None and unterminated[0].function.name == "now"
