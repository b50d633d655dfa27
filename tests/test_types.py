import base64
import json

import pytest
from pydantic import ValidationError

from infermux.types import ContentItem, Conversation, FunctionCall, Message, Role, ToolCall, Type


def test_minimal_line_round_trips_without_added_keys():
    # Issue 24: a line without conversation_id and metadata comes back without them (as Oumi's to_dict,
    # exclude_unset), where it used to gain "conversation_id": null and "metadata": {}.
    conv = Conversation.model_validate_json('{"messages": [{"role": "user", "content": "Hello!"}]}')
    assert conv.messages[0].role is Role.USER
    assert conv.to_json_dict() == {"messages": [{"content": "Hello!", "role": "user"}]}


def test_full_dump_with_ids_metadata_and_all_content_types():
    png = b"\x89PNG\r\n\x1a\nfake"
    line = {
        "conversation_id": "c-1",
        "messages": [
            {"id": "m0", "role": "system", "content": "Be brief."},
            {
                "id": "m1",
                "role": "user",
                "content": [
                    {"type": "image_binary", "binary": base64.b64encode(png).decode()},
                    {"type": "image_path", "content": "/tmp/cat.png"},
                    {"type": "image_url", "content": "https://example.com/cat.png"},
                    {"type": "text", "content": "What is this?"},
                ],
            },
            {"role": "assistant", "content": "A cat."},
            {"role": "tool", "content": "{}"},
        ],
        "metadata": {"source": "test", "n": 3},
    }
    conv = Conversation.model_validate(line)
    assert conv.messages[1].content[0].binary == png
    assert [i.type for i in conv.messages[1].images] == [Type.IMAGE_BINARY, Type.IMAGE_PATH, Type.IMAGE_URL]
    assert conv.messages[1].text == "What is this?"
    assert conv.has_images
    dumped = conv.to_json_dict()
    assert dumped == line
    assert Conversation.model_validate(json.loads(json.dumps(dumped))) == conv


def test_with_reply_appends_assistant_and_merges_metadata():
    conv = Conversation(conversation_id="x", messages=[Message(role=Role.USER, content="hi")], metadata={"a": 1})
    out = conv.with_reply("hello", {"usage": {"completion_tokens": 1}})
    assert out.last_message.role is Role.ASSISTANT and out.last_message.text == "hello"
    assert out.metadata == {"a": 1, "usage": {"completion_tokens": 1}}
    assert conv.metadata == {"a": 1}  # original untouched


@pytest.mark.parametrize(
    "bad",
    [
        # {"messages": []} and unknown keys ({"colour": "red"} on a message) are valid since issue 24 (as in
        # Oumi; a job still refuses an empty row): tests/test_types_oumi.py pins both.
        {"messages": [{"role": "robot", "content": "hi"}]},
        {"messages": [{"role": "user"}]},
        {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "image_binary"}]}]},
        {"messages": [{"role": "assistant", "content": None, "reasoning_content": "thinking"}]},
        {"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}]},  # a call without id
    ],
)
def test_invalid_conversations_are_rejected(bad):
    with pytest.raises(ValidationError):
        Conversation.model_validate(bad)


def test_content_item_is_hashable_and_frozen():
    item = ContentItem(type=Type.TEXT, content="a")
    with pytest.raises(ValidationError):
        item.content = "b"  # type: ignore[misc]


# ---------------------------------------------------------------------- typed answers: Usage, FinishReason

from infermux.types import FinishReason, Usage  # noqa: E402


def test_usage_computes_the_total_and_writes_only_known_counts():
    assert Usage.of(3, 4).to_json_dict() == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert Usage.of(3, 4, 9).total_tokens == 9  # a provider's own total wins
    assert Usage(prompt_tokens=3).to_json_dict() == {"prompt_tokens": 3}
    full = Usage.from_openai({
        "prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 8}, "completion_tokens_details": {"reasoning_tokens": 2},
    })  # fmt: skip
    assert full is not None
    assert full.to_json_dict() == {
        "prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15, "cached_tokens": 8, "reasoning_tokens": 2
    }  # fmt: skip
    assert list(full.to_json_dict())[:3] == ["prompt_tokens", "completion_tokens", "total_tokens"]
    assert Usage.from_openai(None) is None


@pytest.mark.parametrize(
    ("spelling", "reason"),
    [
        ("stop", "stop"), ("STOP", "stop"), ("Length", "length"), ({"type": "stop"}, "stop"),
        ({"type": "length", "length": 5}, "length"), ("end_turn", "stop"), ("stop_sequence", "stop"),
        ("max_tokens", "length"), ("tool_use", "tool_calls"), ("refusal", "content_filter"),
        ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"), ("PROHIBITED_CONTENT", "content_filter"), ("SPII", "content_filter"),
        ("guardrail_intervened", "content_filter"), ("content_filtered", "content_filter"),
        ("tool_calls", "tool_calls"), ("function_call", "tool_calls"), ("content_filter", "content_filter"),
        ("abort", "error"), ("OTHER", "unknown"), ("something new", "unknown"),
    ],
)  # fmt: skip
def test_finish_reason_normalises_every_providers_spelling(spelling, reason):
    parsed = FinishReason.parse(spelling)
    assert parsed is FinishReason(reason) and parsed == reason and json.dumps(parsed) == f'"{reason}"'


def test_no_finish_reason_stays_none_and_with_reply_writes_plain_json():
    assert FinishReason.parse(None) is None and FinishReason.parse("") is None
    conv = Conversation.model_validate({"messages": [{"role": "user", "content": "Hi"}]})
    answered = conv.with_reply("Hello", {"model": "m"}, usage=Usage.of(1, 2), finish_reason="MAX_TOKENS")
    assert answered.metadata == {
        "model": "m", "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}, "finish_reason": "length"
    }  # fmt: skip
    assert type(answered.metadata["finish_reason"]) is str
    # A raw spelling in metadata goes through the same normaliser.
    assert conv.with_reply("x", {"finish_reason": "end_turn"}).metadata["finish_reason"] == "stop"


# ---------------------------------------------------------------------- tool calling (Oumi's current shape)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": True,
    },
    "x-vendor": {"cache": "ephemeral"},
}


def _tool_line() -> dict:
    return {
        "conversation_id": "t-1",
        "messages": [
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "content": None,
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        "index": 0,
                    }
                ],
                "reasoning_content": "The user wants the weather; call the tool.",
            },
            {"content": "18 C, sunny", "role": "tool", "tool_call_id": "call_1"},
            {"content": "It is 18 C and sunny.", "role": "assistant"},
        ],
        "metadata": {},
        "tools": [WEATHER_TOOL],
    }


def test_tool_calling_conversation_round_trips_with_unknown_keys():
    line = _tool_line()
    conv = Conversation.model_validate(line)
    call = conv.messages[2].tool_calls[0]
    assert call.function.name == "get_weather" and call.function.parsed_arguments() == {"city": "Paris"}
    assert conv.messages[2].content is None and conv.messages[2].text == ""
    assert conv.messages[3].tool_call_id == "call_1"
    assert conv.tools[0].name == "get_weather"
    assert conv.to_json_dict() == line  # unknown keys ("index", "strict", "x-vendor") kept verbatim
    assert Conversation.from_json(conv.to_json()) == conv
    assert Conversation.from_dict(conv.to_dict()) == conv


def test_plain_oumi_dump_with_null_tool_fields_loads():
    dump = {
        "conversation_id": None,
        "messages": [
            {"id": None, "content": "Hi", "role": "user", "tool_calls": None, "tool_call_id": None,
             "reasoning_content": None},
        ],
        "metadata": {},
        "tools": None,
    }  # fmt: skip
    conv = Conversation.model_validate(dump)
    assert conv.tools is None and conv.messages[0].tool_calls is None
    assert conv.to_json_dict() == {
        "conversation_id": None,
        "messages": [{"content": "Hi", "role": "user"}],
        "metadata": {},
    }


def test_arguments_given_as_a_dict_are_serialised_to_a_json_string():
    msg = Message.model_validate(
        {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {"n": "ü"}}}]}
    )
    call = msg.tool_calls[0]
    assert msg.content is None  # a call-only turn may leave content out
    assert call.type == "function" and call.function.arguments == '{"n": "ü"}'
    assert msg.to_json_dict()["tool_calls"] == [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"n": "ü"}'}}
    ]


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ({"role": "user", "content": None}, "only an assistant message with tool_calls"),
        ({"role": "assistant", "content": None}, "only an assistant message with tool_calls"),
        (
            {"role": "user", "content": "x", "tool_calls": [{"id": "c", "function": {"name": "f"}}]},
            "belong on an assistant",
        ),
        ({"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f"}, "type": "web"}]}, "function"),
    ],
)
def test_invalid_tool_fields_are_rejected(bad, says):
    with pytest.raises(ValidationError, match=says):
        Message.model_validate(bad)


def test_only_function_tools_are_accepted():
    with pytest.raises(ValidationError):
        Conversation.model_validate({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web"}]})


def test_oumi_accessors_last_message_as_attribute_and_as_method():
    conv = Conversation.model_validate(_tool_line())
    last = conv.last_message
    assert last.text == "It is 18 C and sunny." and last.role is Role.ASSISTANT  # attribute use
    assert isinstance(last, Message) and last == conv.messages[-1] and conv.messages[-1] == last
    assert conv.last_message() == conv.messages[-1]  # Oumi's method use
    assert conv.last_message(Role.TOOL) == conv.messages[3]
    assert conv.last_message("user").text == "Weather in Paris?"
    assert Conversation.model_validate({"messages": [{"role": "user", "content": "x"}]}).last_message("tool") is None
    assert repr(last) == "ASSISTANT: It is 18 C and sunny."  # Oumi's repr (issue 24), as a plain message
    assert conv.first_message().role is Role.SYSTEM and conv.first_message(Role.ASSISTANT) == conv.messages[2]
    assert conv.first_message(Role.TOOL).tool_call_id == "call_1"
    assert conv.filter_messages(Role.ASSISTANT) == [conv.messages[2], conv.messages[4]]
    assert conv.filter_messages(filter_fn=lambda m: bool(m.tool_calls)) == [conv.messages[2]]
    assert conv[1].text == "Weather in Paris?"


def test_with_reply_puts_calls_and_reasoning_on_the_answer():
    conv = Conversation.model_validate({"messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER_TOOL]})
    call = ToolCall(id="c1", function=FunctionCall(name="get_weather", arguments={"city": "Rome"}))
    out = conv.with_reply("", {"finish_reason": "tool_calls"}, tool_calls=[call], reasoning_content="think")
    answer = out.last_message
    assert answer.content is None and answer.tool_calls == [call] and answer.reasoning_content == "think"
    assert out.tools == conv.tools and out.metadata == {"finish_reason": "tool_calls"}
    assert "tool_calls" not in out.metadata and "reasoning_content" not in out.metadata
    assert Conversation.from_json(out.to_json()) == out
