import base64
import json

import pytest
from pydantic import ValidationError

from infermux.types import ContentItem, Conversation, Message, Role, Type


def test_minimal_line_round_trips_to_full_dump():
    conv = Conversation.model_validate_json('{"messages": [{"role": "user", "content": "Hello!"}]}')
    assert conv.messages[0].role is Role.USER
    assert conv.to_json_dict() == {
        "conversation_id": None,
        "messages": [{"content": "Hello!", "role": "user"}],
        "metadata": {},
    }


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
        {"messages": []},
        {"messages": [{"role": "robot", "content": "hi"}]},
        {"messages": [{"role": "user"}]},
        {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "image_binary"}]}]},
        {"messages": [{"role": "user", "content": "hi", "colour": "red"}]},
    ],
)
def test_invalid_conversations_are_rejected(bad):
    with pytest.raises(ValidationError):
        Conversation.model_validate(bad)


def test_content_item_is_hashable_and_frozen():
    item = ContentItem(type=Type.TEXT, content="a")
    with pytest.raises(ValidationError):
        item.content = "b"  # type: ignore[misc]
