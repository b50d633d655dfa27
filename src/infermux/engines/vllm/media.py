"""Images for VLLM: a conversation as vLLM's chat input, its images decoded when its chunk runs.

A message with images becomes a list of OpenAI-style content parts in the order they were given: text as
``{"type": "text"}`` parts and each image as an ``{"type": "image_pil"}`` part, which ``LLM.enqueue_chat``
(vLLM's own chat path) hands to the model's processor with the chat template's image placeholders. The
image bytes are read by :func:`infermux.engines.images.image_bytes` (``image_path``, ``image_binary``,
``data:``/``file:``/``http(s)`` URLs, with its size cap) and decoded by vLLM's own ``ImageMediaIO`` with the
model's ``media_io_kwargs``, as vLLM decodes an ``image_url`` it reads itself, so an answer is the one
``LLM.chat`` gives for the same image. A PDF becomes one image per page (:func:`~infermux.engines.images.pdf_pages`).

A row whose image cannot be read, or which has more images than the model takes
(``model.model_kwargs.limit_mm_per_prompt``), fails alone, with the message index and the image named.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from typing import Any

from infermux.engines.tool_calls import template_messages
from infermux.errors import ErrorKind, RowError
from infermux.types import ContentItem, Conversation, Type

__all__ = ["ChatInputs", "ImageDecoder", "image_label", "vllm_chat"]

#: Decodes one image item into what vLLM takes (PIL images, or vLLM's ``MediaWithBytes`` around one: one,
#: or a PDF's pages); raises ``ValueError``.
Decode = Callable[[ContentItem], list[Any]]


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
                pictures = decode(part)
            except ValueError as exc:  # ImageError names the file or URL
                return RowError(kind=ErrorKind.INVALID_INPUT, message=f"message {index}: {exc}")
            parts.extend({"type": "image_pil", "image_pil": picture} for picture in pictures)
        item["content"] = parts
    return messages


class ImageDecoder:
    """An image item as PIL images (one, or one per page of a PDF), decoded the way vLLM decodes the images it
    fetches itself (``ImageMediaIO`` with the model's ``media_io_kwargs``: RGB, an alpha channel laid on
    white, EXIF orientation applied), within infermux's pixel limit."""

    def __init__(self, media_io_kwargs: dict[str, Any] | None) -> None:
        from vllm.multimodal.media.image import ImageMediaIO

        self._io = ImageMediaIO(**({"image_mode": "RGB"} | dict((media_io_kwargs or {}).get("image", {}))))

    def __call__(self, item: ContentItem) -> list[Any]:
        from infermux.engines import images

        data = images.image_bytes(item)
        where = image_label(item)
        if images.is_pdf(data):
            return images.pdf_pages(data, where)
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as opened:  # the header only: the size before decoding
                width, height = opened.size
        except Exception as exc:  # Pillow raises many kinds for broken files
            raise images.ImageError(f"{where} is not a readable image ({type(exc).__name__}: {exc})") from None
        if width * height > images.MAX_IMAGE_PIXELS:
            raise images.ImageError(
                f"image {where} is {width}x{height} pixels, more than the {images.MAX_IMAGE_PIXELS}-pixel limit"
            )
        try:  # the picture with its file's bytes, as vLLM holds an image it read: hashed by those bytes
            return [self._io.load_bytes(data)]
        except ValueError as exc:  # vLLM's "Failed to load image: ..."
            raise images.ImageError(f"{where} is not a readable image ({exc})") from None


class ChatInputs:
    """Conversations as ``llm``'s chat input (:func:`vllm_chat`), checked against what the model takes: a
    text-only model takes no images, a vision one at most its per-prompt limit (a PDF counts its pages)."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm
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
        if sum(len(m.images) for m in conversation.messages) > limit:  # too many before decoding any
            return _too_many(sum(len(m.images) for m in conversation.messages), limit)
        if self._decode is None:
            self._decode = ImageDecoder(config.multimodal_config.media_io_kwargs)
        chat = vllm_chat(conversation, self._decode)
        if isinstance(chat, list):  # a PDF is one image per page
            parts = [p for m in chat if isinstance(m["content"], list) for p in m["content"]]
            count = sum(p["type"] == "image_pil" for p in parts)
            if count > limit:
                return _too_many(count, limit)
        return chat

    async def all(self, conversations: list[Conversation]) -> list[list[dict[str, Any]] | RowError]:
        """Every row's input; rows with images are read and decoded in a worker thread, beside vLLM's steps."""
        if not any(c.has_images for c in conversations):
            return [self(c) for c in conversations]
        return await asyncio.to_thread(lambda: [self(c) for c in conversations])


def _too_many(count: int, limit: int) -> RowError:
    return RowError(
        kind=ErrorKind.INVALID_INPUT,
        message=f"the conversation has {count} images (a PDF counts its pages) and the VLLM engine takes at most "
        f"{limit} per prompt; raise model.model_kwargs.limit_mm_per_prompt (e.g. {{image: {count}}}).",
    )
