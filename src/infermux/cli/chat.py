"""Interactive chat: multi-turn history, streamed answers, and a plain mode for piped stdin."""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

from infermux.types import ContentItem, Conversation, Message, Role, Type

if TYPE_CHECKING:
    from infermux.configs.inference_config import InferenceConfig
    from infermux.engines.base import InferenceEngine


def image_item(ref: str) -> ContentItem:
    if ref.startswith(("http://", "https://", "data:")):
        return ContentItem(type=Type.IMAGE_URL, content=ref)
    return ContentItem(type=Type.IMAGE_PATH, content=ref)


def user_message(text: str, images: list[str]) -> Message:
    if not images:
        return Message(role=Role.USER, content=text)
    items = [image_item(i) for i in images] + [ContentItem(type=Type.TEXT, content=text)]
    return Message(role=Role.USER, content=items)


async def answer(engine: InferenceEngine, history: list[Message], cfg: InferenceConfig) -> Message:
    """Stream one answer to stdout and return it as an assistant message."""
    conversation = Conversation(messages=history)
    text_parts: list[str] = []
    async for event in engine.astream(conversation, cfg.generation):
        if event.delta:
            text_parts.append(event.delta)
            sys.stdout.write(event.delta)
            sys.stdout.flush()
        if event.final and event.conversation is not None:
            text = event.conversation.last_message.text
            if not text_parts and text:
                sys.stdout.write(text)
            sys.stdout.write("\n")
            sys.stdout.flush()
            return event.conversation.last_message
    sys.stdout.write("\n")
    return Message(role=Role.ASSISTANT, content="".join(text_parts))


def run_chat(cfg: InferenceConfig, *, system_prompt: str | None, images: list[str]) -> None:
    from infermux.engines.registry import build_engine

    engine = build_engine(cfg)
    try:
        history: list[Message] = []
        if system_prompt:
            history.append(Message(role=Role.SYSTEM, content=system_prompt))
        pending_images = list(images)
        for line in sys.stdin:
            text = line.rstrip("\n")
            if not text.strip():
                continue
            history.append(user_message(text, pending_images))
            pending_images = []
            history.append(asyncio.run(answer(engine, history, cfg)))
    finally:
        engine.close()
