"""Oumi's conversation API, fact by fact (issue 24).

Each test names the Oumi behaviour it matches, as ``oumi-ai/oumi`` states it at commit d8ed07778 in
``src/oumi/core/types/conversation.py`` (``conversation.py:LINE``), ``src/oumi/core/types/tool_call.py``
(``tool_call.py:LINE``) and ``tests/unit/core/types/test_conversation.py`` (``oumi test:LINE``), or the
deliberate difference that docs/oumi-compatibility.md documents.
"""

from __future__ import annotations

import base64
import json
from typing import Literal

import pytest
from pydantic import ValidationError

from infermux.types import (
    ContentItem,
    ContentItemCounts,
    Conversation,
    FunctionCall,
    JSONSchema,
    Message,
    Role,
    Tool,
    ToolCall,
    Type,
)

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNk+A8AAQUBAScY42YAAAAASUVORK5CYII=")
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL = {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "SF"}'}}


def _mixed() -> tuple[Message, list[ContentItem]]:
    items = [
        ContentItem(type=Type.TEXT, content="aaa"),
        ContentItem(type=Type.IMAGE_BINARY, binary=PNG),
        ContentItem(type=Type.TEXT, content=" B B "),
        ContentItem(type=Type.IMAGE_PATH, content="/tmp/test/dummy.jpeg", binary=PNG),
        ContentItem(type=Type.TEXT, content="CC"),
    ]
    return Message(role=Role.USER, content=items), items


# ---------------------------------------------------------------------- 1. unknown keys


def test_unknown_keys_at_every_level_load_and_are_written_back_unchanged():
    # Oumi loads such a line (oumi test:267-283, 391-401: unknown keys are ignored, pydantic's default at
    # conversation.py:128, 222, 422). Deliberate difference: infermux keeps them and writes them back.
    line = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "content": "Hi", "detail": {"x": [1, None]}}], "name": "ann"},
            {"role": "assistant", "content": "Hi there!", "type": "text"},
        ],
        "source": "wiki",
        "split": "train",
    }
    conv = Conversation.from_dict(line)
    assert conv.messages[1].content == "Hi there!"
    assert conv.to_dict() == line
    assert json.loads(conv.to_json()) == line
    assert Conversation.from_json(conv.to_json()) == conv
    answered = conv.with_reply("ok").replace(conversation_id="c")
    assert answered.to_json_dict()["source"] == "wiki" and answered.messages[0].get("name") == "ann"


# ---------------------------------------------------------------------- 2. the methods Oumi code calls


def test_content_item_is_image_and_is_text_are_methods_and_still_read_as_flags():
    # conversation.py:151-157: is_image() and is_text() are methods. infermux code read is_image as a
    # property; both forms answer.
    image, text = ContentItem(type=Type.IMAGE_URL, content="http://x/a.png"), ContentItem(type=Type.TEXT, content="a")
    assert image.is_image() is True and image.is_text() is False
    assert text.is_text() is True and text.is_image() is False
    assert image.is_image and not text.is_image and text.is_text and not image.is_text
    assert image.is_image == True and text.is_image == False  # noqa: E712


def test_message_content_item_methods_on_mixed_items():
    # oumi test:630-675 (conversation.py:334-410): flags, flattened text joined by " ", the item lists
    # and the ContentItemCounts (conversation.py:105-115).
    message, items = _mixed()
    assert message.contains_text() and message.contains_images()
    assert not message.contains_single_text_content_item_only() and not message.contains_text_content_items_only()
    assert not message.contains_single_image_content_item_only() and not message.contains_image_content_items_only()
    assert message.compute_flattened_text_content() == "aaa  B B  CC"
    assert message.compute_flattened_text_content("||") == "aaa|| B B ||CC"
    assert message.content_items == items
    assert message.image_content_items == [items[1], items[3]]
    assert message.text_content_items == [items[0], items[2], items[4]]
    counts = message.count_content_items()
    assert counts == ContentItemCounts(total_items=5, image_items=2, text_items=3) and counts.image_items == 2


@pytest.mark.parametrize("kind", [Type.IMAGE_BINARY, Type.IMAGE_PATH, Type.IMAGE_URL])
def test_message_with_one_image_only(kind):
    # oumi test:682-714.
    item = ContentItem(type=kind, content=None if kind == Type.IMAGE_BINARY else "foo",
                       binary=PNG if kind == Type.IMAGE_BINARY else None)  # fmt: skip
    message = Message(role=Role.ASSISTANT, content=[item])
    assert not message.contains_text() and message.contains_images()
    assert message.contains_single_image_content_item_only() and message.contains_image_content_items_only()
    assert message.compute_flattened_text_content("Z") == "" and message.text_content_items == []
    assert message.count_content_items() == ContentItemCounts(1, 0, 1)


def test_string_content_counts_as_one_text_item():
    # oumi test:763-789 (conversation.py:318-320): a string content is one text item.
    message = Message(role=Role.USER, content="bzzz")
    assert message.contains_text() and message.contains_single_text_content_item_only()
    assert message.contains_text_content_items_only() and not message.contains_images()
    assert message.content_items == [ContentItem(type=Type.TEXT, content="bzzz")]
    assert message.compute_flattened_text_content("X") == "bzzz"
    assert message.count_content_items() == ContentItemCounts(total_items=1, text_items=1, image_items=0)
    double = Message(role=Role.USER, content=[ContentItem(type=Type.TEXT, content="bzzz")] * 2)
    assert double.compute_flattened_text_content("^") == "bzzz^bzzz"  # oumi test:792-819
    assert not double.contains_single_text_content_item_only() and double.contains_text_content_items_only()


def test_tool_call_only_message_has_no_content_items():
    # conversation.py:314-329: content None yields no items.
    message = Message.model_validate({"role": "assistant", "content": None, "tool_calls": [CALL]})
    assert message.content_items == [] and not message.contains_text() and not message.contains_images()
    assert message.count_content_items() == ContentItemCounts(0, 0, 0)


def test_message_get_reads_fields_dict_style():
    # conversation.py:302-312 and oumi test:1459-1486: declared fields, else the default; method names
    # are not keys. Deliberate difference: keys kept from the input are readable too.
    message = Message.model_validate({"role": "user", "content": "hello", "name": "ann"})
    assert message.get("content") == "hello" and message.get("role") == Role.USER
    assert message.get("tool_calls") is None and message.get("reasoning_content") is None
    assert message.get("nonexistent_key") is None and message.get("nonexistent_key", "default") == "default"
    assert message.get("get") is None and message.get("model_dump", "x") == "x" and message.get("text", 1) == 1
    assert message.get("name") == "ann"


def test_function_call_get_arguments_dict_follows_oumi():
    # tool_call.py:178-198 and oumi test:1380-1403: "" gives {}, a JSON list or invalid JSON raises
    # ValueError naming the function. parsed_arguments() keeps infermux's meaning (any JSON value).
    assert FunctionCall(name="fn", arguments='{"city": "SF"}').get_arguments_dict() == {"city": "SF"}
    assert FunctionCall(name="fn", arguments="").get_arguments_dict() == {}
    with pytest.raises(ValueError, match="broken_fn"):
        FunctionCall(name="broken_fn", arguments="{bad json").get_arguments_dict()
    with pytest.raises(ValueError, match="JSON object"):
        FunctionCall(name="fn", arguments="[1, 2]").get_arguments_dict()
    assert FunctionCall(name="fn", arguments="[1, 2]").parsed_arguments() == [1, 2]


def test_function_call_arguments_coercion():
    # tool_call.py:161-176 and oumi test:1355-1377: dict and list arguments become a JSON string, other
    # types are refused.
    assert FunctionCall(name="fn", arguments={"key": "value"}).arguments == '{"key": "value"}'  # type: ignore[arg-type]
    assert FunctionCall(name="fn", arguments=[1, 2, 3]).arguments == "[1, 2, 3]"  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be a str, dict, or list"):
        FunctionCall(name="fn", arguments=42)  # type: ignore[arg-type]


def test_append_id_to_string():
    # conversation.py:584-593.
    assert (
        Conversation(messages=[], conversation_id="c1").append_id_to_string("Failed. ")
        == "Failed. Conversation id: c1."
    )
    assert Conversation(messages=[], conversation_id="c1").append_id_to_string("") == "Conversation id: c1."
    assert Conversation(messages=[]).append_id_to_string("Failed.") == "Failed."


# ---------------------------------------------------------------------- 3. tools from Python functions


def _typed_get_weather(city: str, unit: Literal["C", "F"] = "C") -> str:
    """Get the current weather for a city.

    Args:
        city: The city to fetch weather for.
        unit: The unit (choices: ["C", "F"])

    Returns:
        A short weather description.
    """
    return f"Sunny in {city}"


def test_a_python_function_in_tools_becomes_a_json_schema_tool():
    # conversation.py:465-489 and oumi test:1196-1226: callables go through get_json_schema; dicts and
    # tools pass; the tool round-trips through to_dict.
    conv = Conversation(messages=[Message(role=Role.USER, content="Weather?")], tools=[WEATHER, _typed_get_weather])
    assert conv.tools is not None and all(isinstance(t, Tool) for t in conv.tools)
    fn = conv.tools[1].function
    assert fn.name == "_typed_get_weather" and fn.description == "Get the current weather for a city."
    assert fn.parameters is not None and fn.parameters.required == ["city"]
    assert fn.parameters.properties is not None and fn.parameters.properties["unit"].enum == ["C", "F"]
    assert conv.tools[1].to_json_dict()["function"]["return"] == {"type": "string",
                                                                   "description": "A short weather description."}  # fmt: skip
    assert Conversation.from_dict(conv.to_dict()).tools == conv.tools
    assert Tool.from_function(_typed_get_weather) == conv.tools[1]


def test_a_function_without_docstring_or_a_non_tool_is_refused_clearly():
    # oumi test:1228-1251: a missing docstring names the problem; a value that is neither dict nor callable
    # is refused naming both. (Oumi lets transformers' DocstringParsingException through; infermux raises a
    # ValidationError, a ValueError, saying the same.)
    def no_docstring(x: int) -> int:
        return x

    with pytest.raises(ValidationError, match="docstring"):
        Conversation(messages=[Message(role=Role.USER, content="Hi")], tools=[no_docstring])
    with pytest.raises(ValidationError, match=r"dict.*callable"):
        Conversation(messages=[Message(role=Role.USER, content="Hi")], tools=[123])  # type: ignore[list-item]


def test_tool_parameters_are_typed_and_still_a_dict():
    # tool_call.py:41-80, 112 and oumi test:1334-1343: attribute access on the schema. Deliberate
    # difference: JSONSchema is a dict (request bodies and JSON take it as it is), so `.items` is the dict
    # method and an array's items schema is `["items"]` or `.items_schema`.
    schema = {"type": "object", "required": ["tags"], "additionalProperties": False,
              "properties": {"tags": {"type": "array", "items": {"type": "string", "default": None}}}}  # fmt: skip
    conv = Conversation.model_validate(
        {"messages": [{"role": "user", "content": "x"}],
         "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}]}
    )  # fmt: skip
    params = conv.tools[0].function.parameters  # type: ignore[index]
    assert isinstance(params, JSONSchema) and isinstance(params, dict) and params == schema
    assert params.required == ["tags"] and params.type == "object" and params.title is None
    assert params.additionalProperties is False
    assert (
        params.properties["tags"].items_schema.type == "string"
        and params["properties"]["tags"]["items"].default is None
    )
    assert json.dumps(params) == json.dumps(schema)  # same keys, same order, explicit nulls kept
    assert conv.to_json_dict()["tools"][0]["function"]["parameters"] == schema
    with pytest.raises(ValidationError, match="not a JSON schema type"):
        Tool.model_validate({"function": {"name": "f", "parameters": {"type": "dict"}}})


# ---------------------------------------------------------------------- 4. mutable, possibly empty


def test_conversation_can_be_built_step_by_step_and_start_empty():
    # conversation.py:422 (no frozen config) and oumi test:881-888: a Conversation changes after it is
    # built and may start with no messages; Message and ContentItem stay frozen (conversation.py:128, 222).
    conv = Conversation(messages=[])
    assert conv.last_message() is None and not conv.last_message and conv.first_message() is None
    conv.messages.append(Message(role=Role.USER, content="hi"))
    conv.metadata["foo"] = "bar"
    conv.conversation_id = "c1"
    assert conv.last_message().content == "hi" and conv.last_message.text == "hi"
    assert conv.to_json_dict() == {"conversation_id": "c1", "messages": [{"content": "hi", "role": "user"}],
                                   "metadata": {"foo": "bar"}}  # fmt: skip
    with pytest.raises(ValidationError):
        conv.messages = "not messages"  # type: ignore[assignment]
    with pytest.raises(ValidationError, match="frozen"):
        conv.messages[0].content = "x"  # type: ignore[misc]
    with pytest.raises(IndexError, match="no messages"):
        _ = Conversation(messages=[]).last_message.text
    assert repr(Conversation(messages=[])) == "" and repr(Conversation(messages=[]).last_message) == "(no messages)"


# ---------------------------------------------------------------------- 5. validation Oumi does


def test_a_tool_call_needs_an_id():
    # tool_call.py:206 and oumi test:1273-1288.
    with pytest.raises(ValidationError, match="id"):
        Message.model_validate({"role": "assistant", "content": None,
                                "tool_calls": [{"type": "function", "function": {"name": "x", "arguments": "{}"}}]})  # fmt: skip


def test_null_content_needs_tool_calls_reasoning_alone_is_not_enough():
    # conversation.py:290-295 and oumi test:1302-1305, 1431-1434.
    with pytest.raises(ValidationError, match="reasoning_content alone is not enough"):
        Message(role=Role.ASSISTANT, content=None, reasoning_content="thought")
    with pytest.raises(ValidationError, match="non-empty"):
        Message(role=Role.ASSISTANT, content=None, tool_calls=[])
    assert Message(role=Role.ASSISTANT, content=None, tool_calls=[ToolCall.model_validate(CALL)]).content is None


# ---------------------------------------------------------------------- 6. output bytes and repr


def test_to_json_is_compact_and_adds_no_keys_the_input_did_not_have():
    # conversation.py:600-604 (model_dump_json, exclude_unset, exclude_none) and oumi test:319-334.
    line = '{"messages":[{"content":"Hello","role":"user"},{"content":"Hi there!","role":"assistant"}]}'
    assert Conversation.from_json(line).to_json() == line
    with_meta = Conversation(messages=[Message(role=Role.USER, content="Hé")], metadata={"test": "metadata"})
    assert with_meta.to_json() == '{"messages":[{"content":"Hé","role":"user"}],"metadata":{"test":"metadata"}}'
    # Given keys stay, also when empty: metadata {} given is written back.
    assert Conversation.from_json('{"messages":[],"metadata":{}}').to_json() == '{"messages":[],"metadata":{}}'


def test_tool_call_round_trip_is_byte_identical():
    # oumi test:1308-1331 (conversation.py:566-582: content null kept on a call-only message). Deliberate
    # difference: to_json() keeps "content": null as well (Oumi's to_json drops it).
    raw = {"messages": [{"role": "user", "content": "Weather in SF?"},
                        {"role": "assistant", "content": None, "tool_calls": [CALL]},
                        {"role": "tool", "content": '{"temp": 65}', "tool_call_id": "call_abc"}],
           "tools": [WEATHER]}  # fmt: skip
    conv = Conversation.model_validate(raw)
    assert conv.to_dict() == raw
    assert json.loads(conv.to_json())["messages"][1]["content"] is None


def test_repr_is_oumis():
    # conversation.py:210-212, 412-419, 611-613 and oumi test:138-147.
    conv = Conversation(messages=[
        Message(role=Role.USER, content="Hello", id="1"),
        Message(role=Role.ASSISTANT, content="Hi, how can I help you?"),
        Message(role=Role.USER, content=[ContentItem(type=Type.TEXT, content="I need assistance with my account."),
                                         ContentItem(type=Type.IMAGE_BINARY, binary=PNG)]),
    ])  # fmt: skip
    assert repr(conv.messages[0]) == "1 - USER: Hello"
    assert repr(conv.messages[2]) == "USER: I need assistance with my account. | <IMAGE_BINARY>"
    assert repr(conv) == (
        "1 - USER: Hello\nASSISTANT: Hi, how can I help you?\nUSER: I need assistance with my account. | <IMAGE_BINARY>"
    )
