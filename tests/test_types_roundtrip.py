"""Property test: any conversation, with every field the data model has (images, tool calls with
unknown keys, tool results, reasoning, tools, metadata), survives dump → load unchanged, also through
the JSONL reader that validates batch input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infermux.jobs.rows import iter_rows
from infermux.types import Conversation

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
_KEY = st.text(st.characters(whitelist_categories=("Ll", "Nd"), whitelist_characters="_-"), min_size=1, max_size=8)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEY, inner, max_size=3),
    max_leaves=8,
)


def _extras(declared: set[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(_KEY.filter(lambda k: k not in declared), _JSON, max_size=2)


def _content_item() -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.builds(lambda t: {"type": "text", "content": t}, _TEXT),
        st.builds(lambda t: {"type": "image_url", "content": "https://x.test/" + t}, _KEY),
        st.builds(lambda t: {"type": "image_path", "content": "/tmp/" + t}, _KEY),
        st.builds(lambda b: {"type": "image_binary", "binary": b}, st.binary(min_size=1, max_size=12)),
    )


_ARGUMENTS = st.one_of(_TEXT, st.dictionaries(_KEY, _JSON, max_size=3))


@st.composite
def _tool_call(draw: st.DrawFn) -> dict[str, Any]:
    function = {"name": draw(_KEY), "arguments": draw(_ARGUMENTS), **draw(_extras({"name", "arguments"}))}
    call: dict[str, Any] = {"function": function, **draw(_extras({"id", "type", "function"}))}
    call["id"] = draw(_KEY)  # required since issue 24, as in Oumi's ToolCall
    if draw(st.booleans()):
        call["type"] = "function"
    return call


@st.composite
def _message(draw: st.DrawFn) -> dict[str, Any]:
    role = draw(st.sampled_from(["system", "user", "assistant", "tool"]))
    message: dict[str, Any] = {"role": role}
    if role == "assistant" and draw(st.booleans()):
        message["tool_calls"] = draw(st.lists(_tool_call(), min_size=1, max_size=3))
    content = st.one_of(_TEXT, st.lists(_content_item(), max_size=3))
    if "tool_calls" in message:
        content = st.none() | content
    message["content"] = draw(content)
    if draw(st.booleans()):
        message["id"] = draw(_KEY)
    if role == "tool" and draw(st.booleans()):
        message["tool_call_id"] = draw(_KEY)
    if role == "assistant" and draw(st.booleans()):
        message["reasoning_content"] = draw(_TEXT)
    return message


@st.composite
def _tool(draw: st.DrawFn) -> dict[str, Any]:
    function: dict[str, Any] = {"name": draw(_KEY), **draw(_extras({"name", "description", "parameters"}))}
    if draw(st.booleans()):
        function["description"] = draw(_TEXT)
    if draw(st.booleans()):
        function["parameters"] = {"type": "object", "properties": draw(st.dictionaries(_KEY, _JSON, max_size=2))}
    return {"type": "function", "function": function, **draw(_extras({"type", "function"}))}


@st.composite
def conversations(draw: st.DrawFn) -> dict[str, Any]:
    data: dict[str, Any] = {"messages": draw(st.lists(_message(), min_size=1, max_size=5))}
    if draw(st.booleans()):
        data["conversation_id"] = draw(_KEY)
    if draw(st.booleans()):
        data["metadata"] = draw(st.dictionaries(_KEY, _JSON, max_size=3))
    if draw(st.booleans()):
        data["tools"] = draw(st.lists(_tool(), max_size=3))
    return data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conversations())
def test_every_field_survives_dump_and_load(data: dict[str, Any]) -> None:
    conv = Conversation.model_validate(data)
    dumped = conv.to_json_dict()
    again = Conversation.from_json(conv.to_json())
    assert again == conv
    assert again.to_json_dict() == dumped  # a second round trip is byte-for-byte stable
    assert Conversation.from_dict(json.loads(json.dumps(dumped))) == conv
    for message, given_message in zip(again.messages, data["messages"], strict=True):
        assert (message.tool_calls is None) == ("tool_calls" not in given_message)
    assert (again.tools is None) == ("tools" not in data)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(conversations(), min_size=1, max_size=4))
def test_jsonl_written_from_dumps_is_valid_batch_input(tmp_path: Path, rows: list[dict[str, Any]]) -> None:
    path = tmp_path / "in.jsonl"
    convs = [Conversation.model_validate(r) for r in rows]
    path.write_text("".join(c.to_json() + "\n" for c in convs), encoding="utf-8")
    assert [r.conversation for r in iter_rows(path)] == convs
