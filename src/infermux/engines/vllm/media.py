"""Images for VLLM: a conversation as vLLM's chat input, its images decoded when its chunk runs.

A message with images becomes a list of OpenAI-style content parts in the order they were given: text as
``{"type": "text"}`` parts and each image as an ``{"type": "image_pil"}`` part, which ``LLM.enqueue_chat``
(vLLM's own chat path) hands to the model's processor with the chat template's image placeholders. The
image bytes (from ``image_path``, ``image_binary`` or ``image_url``) are decoded by vLLM's own
``ImageMediaIO`` with the model's ``media_io_kwargs``, as vLLM decodes an ``image_url`` it reads itself, so
an answer is the one ``LLM.chat`` gives for the same image.

A row whose image cannot be read, or which has more images than the model takes
(``model.model_kwargs.limit_mm_per_prompt``), fails alone, with the message index and the image named.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from infermux.engines.tool_calls import template_messages
from infermux.errors import ErrorKind, RowError
from infermux.types import ContentItem, Conversation, Type

__all__ = ["ChatInputs", "ImageDecoder", "image_bytes", "image_label", "vllm_chat"]

#: Decodes one image item into what vLLM takes (a PIL image); raises ``ValueError`` / ``OSError``.
Decode = Callable[[ContentItem], Any]


def image_label(item: ContentItem) -> str:
    """How an error names an image: its path or URL (a ``data:`` URL by its media type only), or its size."""
    content = item.content or ""
    if item.binary:
        named = f", {content[:200]!r}" if content and not content.startswith("data:") else ""
        return f"{item.type.value} ({len(item.binary)} bytes{named})"
    if content.startswith("data:"):
        return f"a data: URL ({content[5:].split(',', 1)[0] or 'no media type'})"
    return repr(content[:200])


def vllm_chat(conversation: Conversation, decode: Decode) -> list[dict[str, Any]] | RowError:
    """``conversation``'s messages for ``LLM.enqueue_chat``, with its images decoded, or the row's error."""
    messages = template_messages(conversation)
    for index, (message, item) in enumerate(zip(conversation.messages, messages, strict=True)):
        if not message.images or not isinstance(message.content, list):
            continue
        parts: list[dict[str, Any]] = []
        for part in message.content:
            if part.type == Type.TEXT:
                parts.append({"type": "text", "text": part.content or ""})
                continue
            try:
                image = decode(part)
            except (ValueError, OSError) as exc:
                return RowError(
                    kind=ErrorKind.INVALID_INPUT,
                    message=f"messages[{index}]: cannot read the image {image_label(part)}: {exc}",
                )
            parts.append({"type": "image_pil", "image_pil": image})
        item["content"] = parts
    return messages


def image_bytes(item: ContentItem) -> bytes:
    """An image item's bytes (a file, the item's own bytes, a ``data:`` URL)."""
    from infermux.engines.remote.media import image_payload

    payload = image_payload(item)
    if payload.data is None:
        raise ValueError("only image files, bytes and data: URLs are read locally")
    return payload.data


class ImageDecoder:
    """Image items to PIL images the way vLLM decodes the images it fetches itself (``ImageMediaIO``, with
    the model's ``media_io_kwargs``: RGB, an alpha channel laid on white, EXIF orientation applied)."""

    def __init__(self, media_io_kwargs: dict[str, Any] | None, read: Callable[[ContentItem], bytes]) -> None:
        from vllm.multimodal.media.image import ImageMediaIO

        self._io = ImageMediaIO(**({"image_mode": "RGB"} | dict((media_io_kwargs or {}).get("image", {}))))
        self._read = read

    def __call__(self, item: ContentItem) -> Any:
        data = self._read(item)
        return self._io.load_bytes(data).media


class ChatInputs:
    """Conversations as ``llm``'s chat input (:func:`vllm_chat`), checked against what the model takes: a
    text-only model takes no images, a vision one at most its per-prompt limit. ``read`` gives an image
    item's bytes."""

    def __init__(self, llm: Any, read: Callable[[ContentItem], bytes]) -> None:
        self._llm = llm
        self._read = read
        self._decode: ImageDecoder | None = None

    def __call__(self, conversation: Conversation) -> list[dict[str, Any]] | RowError:
        if not conversation.has_images:
            return template_messages(conversation)
        config = self._llm.model_config
        if not config.is_multimodal_model:
            return RowError(
                kind=ErrorKind.UNSUPPORTED_INPUT,
                message=f"{config.model} takes no images in vLLM (it is not a vision-language model); remove "
                "the images or use a vision-language model.",
            )
        limit = config.multimodal_config.get_limit_per_prompt("image")
        count = sum(len(m.images) for m in conversation.messages)
        if count > limit:
            return RowError(
                kind=ErrorKind.INVALID_INPUT,
                message=f"the conversation has {count} images and the VLLM engine takes at most {limit} per "
                "prompt; raise model.model_kwargs.limit_mm_per_prompt (e.g. {image: " + f"{count}" + "}).",
            )
        if self._decode is None:
            self._decode = ImageDecoder(config.multimodal_config.media_io_kwargs, self._read)
        return vllm_chat(conversation, self._decode)

    async def all(self, conversations: list[Conversation]) -> list[list[dict[str, Any]] | RowError]:
        """Every row's input; rows with images are read and decoded in a worker thread, beside vLLM's steps."""
        if not any(c.has_images for c in conversations):
            return [self(c) for c in conversations]
        return await asyncio.to_thread(lambda: [self(c) for c in conversations])
