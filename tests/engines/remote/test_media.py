"""Image payloads for provider protocols."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from infermux.engines.remote.media import image_payload, sniff_image_type
from infermux.types import ContentItem, Type
from tests.fakes import tiny_png

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 20
WEBP = b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 8


def test_sniffing_ignores_names() -> None:
    assert sniff_image_type(tiny_png()) == "image/png"
    assert sniff_image_type(JPEG) == "image/jpeg"
    assert sniff_image_type(WEBP) == "image/webp"
    assert sniff_image_type(b"GIF89a....") == "image/gif"
    assert sniff_image_type(b"not an image") is None


def test_paths_bytes_and_data_urls_become_bytes(tmp_path: Path) -> None:
    misnamed = tmp_path / "photo.png"
    misnamed.write_bytes(JPEG)  # a JPEG with a .png name is still a JPEG
    from_path = image_payload(ContentItem(type=Type.IMAGE_PATH, content=str(misnamed)))
    assert from_path.data == JPEG and from_path.media_type == "image/jpeg" and from_path.format == "jpeg"
    from_bytes = image_payload(ContentItem(type=Type.IMAGE_BINARY, binary=tiny_png()))
    assert from_bytes.media_type == "image/png" and from_bytes.data_url.startswith("data:image/png;base64,")
    data_url = "data:image/webp;base64," + base64.b64encode(WEBP).decode()
    from_url = image_payload(ContentItem(type=Type.IMAGE_URL, content=data_url))
    assert from_url.data == WEBP and from_url.media_type == "image/webp"


def test_remote_urls_stay_urls() -> None:
    image = image_payload(ContentItem(type=Type.IMAGE_URL, content="https://example.com/a/cat.jpg?size=2"))
    assert image.data is None and image.url == "https://example.com/a/cat.jpg?size=2"
    assert image.media_type == "image/jpeg" and image.data_url == image.url
    with pytest.raises(ValueError, match="not bytes"):
        _ = image.base64


def test_unreadable_inputs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read image file"):
        image_payload(ContentItem(type=Type.IMAGE_PATH, content=str(tmp_path / "missing.png")))
    with pytest.raises(ValueError, match="base64"):
        image_payload(ContentItem(type=Type.IMAGE_URL, content="data:image/png;base64,@@@"))
    with pytest.raises(ValueError, match="not an image"):
        image_payload(ContentItem(type=Type.TEXT, content="hi"))


def test_bytes_carried_by_a_path_or_url_item_are_the_image(tmp_path: Path) -> None:
    gone = str(tmp_path / "never-written.png")
    for item in (
        ContentItem(type=Type.IMAGE_PATH, content=gone, binary=JPEG),
        ContentItem(type=Type.IMAGE_URL, content="https://example.com/x.png", binary=JPEG),
    ):
        image = image_payload(item)
        assert image.data == JPEG and image.media_type == "image/jpeg"


def test_every_protocol_sends_the_bytes_of_an_image_path_item(tmp_path: Path) -> None:
    from infermux.configs import GenerationParams
    from infermux.engines.remote.anthropic.engine import build_messages
    from infermux.engines.remote.bedrock.engine import build_converse_request
    from infermux.engines.remote.gemini.engine import build_contents
    from infermux.engines.remote.openai.format import encode_message
    from infermux.types import Conversation, Message, Role

    png = tiny_png()
    item = ContentItem(type=Type.IMAGE_PATH, content=str(tmp_path / "gone.png"), binary=png)
    message = Message(role=Role.USER, content=[item, ContentItem(type=Type.TEXT, content="what?")])
    conversation = Conversation(messages=[message])
    b64 = base64.b64encode(png).decode()
    assert encode_message(message)["content"][0]["image_url"]["url"] == f"data:image/png;base64,{b64}"
    _, turns = build_messages(conversation)
    assert turns[0]["content"][0]["source"] == {"type": "base64", "media_type": "image/png", "data": b64}
    _, contents = build_contents(conversation)
    assert contents[0]["parts"][0] == {"inlineData": {"mimeType": "image/png", "data": b64}}
    request = build_converse_request("m", conversation, GenerationParams(), {})
    assert request["messages"][0]["content"][0]["image"]["source"] == {"bytes": png}
