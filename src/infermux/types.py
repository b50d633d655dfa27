"""Conversation data model, JSON-compatible with Oumi's Conversation JSONL.

A line of input is either the minimal form ``{"messages": [{"role": "user", "content": "Hi"}]}``
or a full dump with ``conversation_id``, ``metadata`` and per-message ``id``. Content is a string or
a list of content items (``text``, ``image_path``, ``image_url``, ``image_binary``); binary images
travel as base64 strings in JSON.
"""

from __future__ import annotations

import base64
import enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator

__all__ = ["ContentItem", "Conversation", "Message", "Role", "Type"]


class Role(str, enum.Enum):
    """Who speaks a message."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"

    def __str__(self) -> str:
        return self.value


class Type(str, enum.Enum):
    """Kind of a content item."""

    TEXT = "text"
    IMAGE_PATH = "image_path"
    IMAGE_URL = "image_url"
    IMAGE_BINARY = "image_binary"

    def __str__(self) -> str:
        return self.value


class ContentItem(BaseModel):
    """One part of a multimodal message: text, or an image given by path, URL or bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Type
    content: str | None = None
    binary: bytes | None = None

    @field_validator("binary", mode="before")
    @classmethod
    def _decode_binary(cls, value: Any) -> Any:
        if isinstance(value, str):
            return base64.b64decode(value, validate=False)
        return value

    @field_serializer("binary")
    def _encode_binary(self, value: bytes | None) -> str | None:
        return None if value is None else base64.b64encode(value).decode("ascii")

    @model_validator(mode="after")
    def _check_payload(self) -> ContentItem:
        if self.type == Type.IMAGE_BINARY:
            if not self.binary:
                raise ValueError("an image_binary item needs non-empty 'binary' (base64)")
        elif self.content is None or (self.type == Type.TEXT and not isinstance(self.content, str)):
            raise ValueError(f"a {self.type.value} item needs a 'content' string")
        return self

    @property
    def is_image(self) -> bool:
        return self.type != Type.TEXT

    def to_json_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type.value}
        if self.content is not None:
            out["content"] = self.content
        if self.binary is not None:
            out["binary"] = base64.b64encode(self.binary).decode("ascii")
        return out


class Message(BaseModel):
    """One turn of a conversation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str | None = None
    role: Role
    content: str | list[ContentItem]

    @property
    def text(self) -> str:
        """The message's text parts joined by newlines (images left out)."""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(i.content or "" for i in self.content if i.type == Type.TEXT)

    @property
    def images(self) -> list[ContentItem]:
        if isinstance(self.content, str):
            return []
        return [i for i in self.content if i.is_image]

    def to_json_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.id is not None:
            out["id"] = self.id
        if isinstance(self.content, str):
            out["content"] = self.content
        else:
            out["content"] = [i.to_json_dict() for i in self.content]
        out["role"] = self.role.value
        return out


class Conversation(BaseModel):
    """A list of messages with an optional id and free-form metadata."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    conversation_id: str | None = None
    messages: list[Message]
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_messages(self) -> Conversation:
        if not self.messages:
            raise ValueError("'messages' is empty: a conversation needs at least one message")
        return self

    @property
    def last_message(self) -> Message:
        return self.messages[-1]

    @property
    def has_images(self) -> bool:
        return any(m.images for m in self.messages)

    def with_reply(self, text: str, metadata: dict[str, Any] | None = None) -> Conversation:
        """Return a copy ending with an assistant message ``text``.

        ``metadata`` (usage, finish reason, ...) is merged into the conversation metadata.
        """
        merged = dict(self.metadata)
        if metadata:
            merged.update(metadata)
        return Conversation(
            conversation_id=self.conversation_id,
            messages=[*self.messages, Message(role=Role.ASSISTANT, content=text)],
            metadata=merged,
        )

    def to_json_dict(self) -> dict[str, Any]:
        """The Oumi-compatible JSON object for this conversation."""
        return {
            "conversation_id": self.conversation_id,
            "messages": [m.to_json_dict() for m in self.messages],
            "metadata": self.metadata,
        }

    @classmethod
    def from_json_dict(cls, data: Any) -> Conversation:
        return cls.model_validate(data)
