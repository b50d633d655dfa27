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

__all__ = ["ContentItem", "Conversation", "FinishReason", "Message", "Role", "Type", "Usage"]


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


class FinishReason(str, enum.Enum):
    """Why an answer ended, in one vocabulary for every engine (values are the JSON strings)."""

    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    CONTENT_FILTER = "content_filter"
    ERROR = "error"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: Any) -> FinishReason | None:
        """The one normaliser of every provider's spelling, case-insensitive; ``None`` when there is none.

        Takes a string (``"STOP"``, ``"end_turn"``, ``"MAX_TOKENS"``, ``"guardrail_intervened"``, ...) or
        SGLang's ``{"type": "stop"}``; a spelling not known here is ``unknown``.
        """
        if isinstance(value, FinishReason):
            return value
        if isinstance(value, dict):
            value = value.get("type")
        if value is None or value == "":
            return None
        return _FINISH_SPELLINGS.get(str(value).strip().lower(), cls.UNKNOWN)


# Every provider's spelling, lower-cased: OpenAI-compatible servers (OpenAI, vLLM, SGLang, llama.cpp, TGI),
# Anthropic, Bedrock Converse, Gemini/Vertex and transformers-style local decoding.
_SPELLINGS = {
    FinishReason.STOP: "stop end_turn stop_sequence eos eos_token stop_string complete",
    FinishReason.LENGTH: "length max_tokens max_new_tokens model_length model_context_window_exceeded",
    FinishReason.TOOL_CALLS: "tool_calls tool_use function_call malformed_function_call unexpected_tool_call",
    FinishReason.CONTENT_FILTER: """content_filter content_filtered guardrail_intervened refusal safety recitation
        blocklist prohibited_content spii image_safety language""",
    FinishReason.ERROR: "error abort cancelled canceled",
    FinishReason.UNKNOWN: "unknown other finish_reason_unspecified pause_turn",
}
_FINISH_SPELLINGS = {word: reason for reason, words in _SPELLINGS.items() for word in words.split()}


class Usage(BaseModel):
    """Tokens an answer used; every field optional (providers report different subsets)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    """Prompt tokens read from the provider's prompt cache (part of ``prompt_tokens``, as in OpenAI's usage)."""
    cache_creation_tokens: int | None = None
    """Prompt tokens written to the prompt cache (Anthropic; part of ``prompt_tokens``)."""
    reasoning_tokens: int | None = None

    @model_validator(mode="after")
    def _fill_total(self) -> Usage:
        if self.total_tokens is None and self.prompt_tokens is not None and self.completion_tokens is not None:
            object.__setattr__(self, "total_tokens", self.prompt_tokens + self.completion_tokens)
        return self

    @classmethod
    def of(cls, prompt: Any = None, completion: Any = None, total: Any = None, **extra: Any) -> Usage:
        """Build from a provider's counts (ints, numeric strings or ``None``); ``total`` computed if missing."""

        def num(v: Any) -> int | None:
            return None if v is None or v == "" else int(v)

        fields = {k: num(v) for k, v in extra.items()}
        return cls(prompt_tokens=num(prompt), completion_tokens=num(completion), total_tokens=num(total) or None,
                   **fields)  # fmt: skip

    @classmethod
    def from_openai(cls, data: Any) -> Usage | None:
        """Read an OpenAI-shaped ``usage`` object (also llama.cpp, vLLM, SGLang and most gateways)."""
        if not isinstance(data, dict):
            return None
        prompt_details = data.get("prompt_tokens_details") or {}
        completion_details = data.get("completion_tokens_details") or {}
        return cls.of(data.get("prompt_tokens"), data.get("completion_tokens"), data.get("total_tokens"),
                      cached_tokens=prompt_details.get("cached_tokens"),
                      reasoning_tokens=completion_details.get("reasoning_tokens"))  # fmt: skip

    def to_json_dict(self) -> dict[str, int]:
        """The counts that are known (``None`` left out), in the OpenAI order."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


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

    def with_reply(
        self,
        text: str,
        metadata: dict[str, Any] | None = None,
        *,
        usage: Usage | None = None,
        finish_reason: FinishReason | str | None = None,
    ) -> Conversation:
        """Return a copy ending with an assistant message ``text``.

        ``metadata`` (model, ...) is merged into the conversation metadata; ``usage`` and ``finish_reason``
        go in as ``metadata["usage"]`` (a dict) and ``metadata["finish_reason"]`` (a string), normalised.
        """
        merged = dict(self.metadata)
        if metadata:
            merged.update(metadata)
        if usage is not None:
            merged["usage"] = usage.to_json_dict()
        if finish_reason is not None or "finish_reason" in merged:
            reason = FinishReason.parse(finish_reason if finish_reason is not None else merged["finish_reason"])
            merged["finish_reason"] = reason.value if reason is not None else None
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
