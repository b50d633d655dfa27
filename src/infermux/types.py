"""Conversation data model, JSON-compatible with Oumi's Conversation JSONL.

A line of input is either the minimal form ``{"messages": [{"role": "user", "content": "Hi"}]}``
or a full dump with ``conversation_id``, ``metadata``, per-message ``id`` and the tool-calling fields.
Content is a string or a list of content items (``text``, ``image_path``, ``image_url``,
``image_binary``); binary images travel as base64 strings in JSON.

Tool calling follows OpenAI's chat format (which Oumi's Conversation also uses)::

    {"tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {...}}}],
     "messages": [
       {"role": "user", "content": "Weather in Paris?"},
       {"role": "assistant", "content": null, "reasoning_content": "I should call the tool.",
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
       {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"}]}

Keys this model does not know, at any level (a row's ``source`` or ``split``, a message's ``name``, a
content item's ``detail``), are kept and written back unchanged. Tools, tool calls and their JSON
schemas live in :mod:`infermux.tool_types` and are re-exported here.
"""

from __future__ import annotations

import base64
import enum
import json
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_serializer,
    field_validator,
    model_validator,
)

from infermux.tool_types import FunctionCall, FunctionDefinition, JSONSchema, Tool, ToolCall

_T = TypeVar("_T")

__all__ = [
    "ContentItem",
    "ContentItemCounts",
    "Conversation",
    "FinishReason",
    "FunctionCall",
    "FunctionDefinition",
    "JSONSchema",
    "Message",
    "Role",
    "Sample",
    "TokenLogprob",
    "Tool",
    "ToolCall",
    "TopLogprob",
    "Type",
    "Usage",
]


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
        known = _FINISH_SPELLINGS.get(value) if isinstance(value, str) else None
        if known is not None:  # the common case: already a lower-case spelling
            return known
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

        unknown = extra.keys() - cls.model_fields.keys()
        if unknown:
            raise TypeError(f"Usage has no field {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {k: num(v) for k, v in extra.items()}
        p, c, t = num(prompt), num(completion), num(total) or None
        if t is None and p is not None and c is not None:
            t = p + c
        values.update(prompt_tokens=p, completion_tokens=c, total_tokens=t)
        # Counts are ints already: no validation pass (this runs once per answered row).
        return cls.model_construct(None, **values)

    @classmethod
    def from_openai(cls, data: Any) -> Usage | None:
        """Read an OpenAI-shaped ``usage`` object (also llama.cpp, vLLM, SGLang and most gateways)."""
        counts = cls.openai_json(data)
        return None if counts is None else cls.model_construct(None, **counts)

    @staticmethod
    def openai_json(data: Any) -> dict[str, int] | None:
        """``Usage.from_openai(data).to_json_dict()`` without building the model: the per-row hot path of
        every OpenAI-compatible reply (a pydantic model costs more than the rest of the parse)."""
        if not isinstance(data, dict):
            return None
        p, c, t = data.get("prompt_tokens"), data.get("completion_tokens"), data.get("total_tokens")
        if (
            type(p) is int
            and type(c) is int
            and not data.get("prompt_tokens_details")
            and not data.get("completion_tokens_details")
            and "prompt_cache_hit_tokens" not in data
        ):  # the common reply: three plain counts
            return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": t if type(t) is int and t else p + c}
        prompt_details = data.get("prompt_tokens_details") or {}
        completion_details = data.get("completion_tokens_details") or {}
        raw = (
            ("prompt_tokens", data.get("prompt_tokens")),
            ("completion_tokens", data.get("completion_tokens")),
            ("total_tokens", data.get("total_tokens") or None),
            # DeepSeek reports its (automatic) context-cache hits as prompt_cache_hit_tokens
            ("cached_tokens", prompt_details.get("cached_tokens", data.get("prompt_cache_hit_tokens"))),
            ("reasoning_tokens", completion_details.get("reasoning_tokens")),
        )
        out = {k: int(v) for k, v in raw if v is not None and v != ""}
        reasoning, completion = out.get("reasoning_tokens", 0), out.get("completion_tokens")
        if (
            reasoning
            and completion is not None
            and out.get("total_tokens") == sum((out.get("prompt_tokens", 0), completion, reasoning))
        ):
            # a server that counts reasoning apart from the completion (total = prompt + completion +
            # reasoning): reasoning is billed as output, and our completion_tokens includes it, as OpenAI's
            out["completion_tokens"] = completion + reasoning
        if "total_tokens" not in out and "prompt_tokens" in out and "completion_tokens" in out:
            out["total_tokens"] = out["prompt_tokens"] + out["completion_tokens"]
        return {k: out[k] for k in _USAGE_ORDER if k in out}

    def to_json_dict(self) -> dict[str, int]:
        """The counts that are known (``None`` left out), in the OpenAI order."""
        return {k: v for k in _USAGE_FIELDS if (v := getattr(self, k)) is not None}

    @classmethod
    def from_json_dict(cls, data: Any) -> Usage | None:
        """Read a stored ``metadata["usage"]`` (what :meth:`to_json_dict` wrote, or an older row's):
        None unless it is a dict; counts that are not numbers are unknown, keys not known here ignored,
        ``total_tokens`` filled in as the model does."""
        if isinstance(data, Usage):
            return data
        if not isinstance(data, dict):
            return None
        values: dict[str, int | None] = dict.fromkeys(_USAGE_FIELDS)
        fields_set = set()
        for key, stored in data.items():  # the stored keys (three, mostly), not every field
            if key in values and (count := stored if type(stored) is int else _count(stored)) is not None:
                values[key] = count
                fields_set.add(key)
        p, c = values["prompt_tokens"], values["completion_tokens"]
        if values["total_tokens"] is None and p is not None and c is not None:
            values["total_tokens"] = p + c
        return _unvalidated(cls, values, fields_set)

    @staticmethod
    def stored_counts(data: Any) -> tuple[int | None, int | None]:
        """(prompt, completion) tokens of a stored ``metadata["usage"]``, None where unknown: what
        :meth:`from_json_dict` reads, without building the model for the common row (two plain counts)."""
        if type(data) is dict:
            prompt, completion = data.get("prompt_tokens"), data.get("completion_tokens")
            if type(prompt) is int and type(completion) is int:
                return prompt, completion
        usage = Usage.from_json_dict(data)
        return (usage.prompt_tokens, usage.completion_tokens) if usage is not None else (None, None)


def _count(value: Any) -> int | None:
    """A stored token count as an int (as ``int(value)``), or None when it is missing or not a number."""
    if type(value) is int:
        return value
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


_USAGE_FIELDS = tuple(Usage.model_fields)
_USAGE_ORDER = _USAGE_FIELDS


class TopLogprob(BaseModel):
    """One likely alternative at a token position: its text, log-probability and raw bytes.

    ``bytes`` are the token's own bytes (a token may hold part of a multi-byte character, whose
    ``token`` text then shows U+FFFD): joining the answer tokens' bytes gives the answer's exact
    UTF-8. None where the engine does not know them (rows written before they were kept, some providers).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(BaseModel):
    """An answer token, its log-probability, and (with ``top_logprobs``) the most likely alternatives."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token: str
    logprob: float
    bytes: list[int] | None = None
    """The token's raw bytes, as in :class:`TopLogprob`."""
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class Sample(BaseModel):
    """One answer to a prompt (``generation.n`` of them per row, in ``metadata["samples"]``).

    ``usage`` is this answer's share: its own completion tokens (and the prompt's, counted once per
    row in the row's ``metadata["usage"]``); ``logprobs`` is None unless ``generation.logprobs`` is set.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    tool_calls: list[dict[str, Any]] | None = None
    logprobs: list[TokenLogprob] | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """The stable JSON shape: every key present (None when unknown), usage without unknown counts."""
        return {
            "text": self.text,
            "finish_reason": self.finish_reason.value if self.finish_reason is not None else None,
            "usage": self.usage.to_json_dict() if self.usage is not None else None,
            "tool_calls": self.tool_calls,
            "logprobs": [t.model_dump(exclude_none=True) for t in self.logprobs] if self.logprobs is not None else None,
        }

    @classmethod
    def from_json_list(cls, data: Any) -> list[Sample] | None:
        """Read a stored ``metadata["samples"]`` (a list of :meth:`to_json_dict` objects); None unless a list."""
        return [cls.model_validate(s) for s in data] if isinstance(data, list) else None


class _Flag(int):
    """A bool that is also callable: ``item.is_image`` (read as a property) and ``item.is_image()`` (Oumi's
    method) both answer. It compares equal to True/False; ``is True`` does not hold."""

    __slots__ = ()

    def __call__(self) -> bool:
        return self != 0

    def __repr__(self) -> str:
        return "True" if self else "False"

    __str__ = __repr__


_YES, _NO = _Flag(1), _Flag(0)


class ContentItemCounts(NamedTuple):
    """How many content items a message has, by kind (:meth:`Message.count_content_items`)."""

    total_items: int
    text_items: int
    image_items: int


class ContentItem(BaseModel):
    """One part of a multimodal message: text, or an image given by path, URL or bytes."""

    model_config = ConfigDict(extra="allow", frozen=True)

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
    def is_image(self) -> _Flag:
        """Whether the item is an image; also callable, ``is_image()``, as Oumi's method."""
        return _NO if self.type == Type.TEXT else _YES

    @property
    def is_text(self) -> _Flag:
        """Whether the item is text; also callable, ``is_text()``, as Oumi's method."""
        return _YES if self.type == Type.TEXT else _NO

    def __repr__(self) -> str:
        return f"{self.content}" if self.type == Type.TEXT else f"<{self.type.value.upper()}>"

    def to_json_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type.value}
        if self.content is not None:
            out["content"] = self.content
        if self.binary is not None:
            out["binary"] = base64.b64encode(self.binary).decode("ascii")
        if self.__pydantic_extra__:
            out.update(self.__pydantic_extra__)
        return out


# ---------------------------------------------------------------------- messages and conversations


class Message(BaseModel):
    """One turn of a conversation.

    ``content`` may be ``None`` only on an assistant turn that carries ``tool_calls`` (as in Oumi and
    OpenAI). A ``tool`` turn answers the call named by ``tool_call_id``. Keys not declared here are kept
    and written back.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str | None = None
    role: Role
    content: str | list[ContentItem] | None
    tool_calls: list[ToolCall] | None = None
    """Calls an assistant turn makes (OpenAI's shape)."""
    tool_call_id: str | None = None
    """On a ``tool`` turn: the id of the call this message answers."""
    reasoning_content: str | None = None
    """The model's reasoning (thinking) that came with an assistant turn, kept apart from ``content``."""

    @model_validator(mode="before")
    @classmethod
    def _content_optional_with_calls(cls, data: Any) -> Any:
        # OpenAI lets an assistant turn that calls tools leave out "content" altogether.
        if isinstance(data, dict) and "content" not in data and data.get("tool_calls"):
            return {**data, "content": None}
        return data

    @model_validator(mode="after")
    def _check_tool_fields(self) -> Message:
        if self.tool_calls and self.role != Role.ASSISTANT:
            raise ValueError(f"'tool_calls' belong on an assistant message, not on a {self.role.value} message")
        if self.content is None and not (self.role == Role.ASSISTANT and self.tool_calls):
            raise ValueError(
                "'content' is null: only an assistant message with tool_calls (a non-empty list) "
                'may omit its content; reasoning_content alone is not enough. Use "" for an empty message'
            )
        return self

    @property
    def text(self) -> str:
        """The message's text parts joined by newlines (images left out); "" when content is null."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(i.content or "" for i in self.content if i.type == Type.TEXT)

    @property
    def images(self) -> list[ContentItem]:
        if not isinstance(self.content, list):
            return []
        return [i for i in self.content if i.type != Type.TEXT]

    # Oumi's accessors: a string content counts as one text item.

    def get(self, key: str, default: Any = None) -> Any:
        """A field (or a key kept from the input) by name, dict-style, else ``default`` (chat templates
        read messages this way); methods and properties are not keys."""
        if key in type(self).model_fields:
            return getattr(self, key)
        extra = self.__pydantic_extra__
        return extra.get(key, default) if extra else default

    @property
    def content_items(self) -> list[ContentItem]:
        """Every content item (a string content as one text item; none when content is null)."""
        if isinstance(self.content, str):
            return [ContentItem(type=Type.TEXT, content=self.content)]
        return list(self.content) if self.content is not None else []

    @property
    def text_content_items(self) -> list[ContentItem]:
        return [i for i in self.content_items if i.type == Type.TEXT]

    @property
    def image_content_items(self) -> list[ContentItem]:
        return self.images

    def count_content_items(self) -> ContentItemCounts:
        items = self.content_items
        texts = sum(1 for i in items if i.type == Type.TEXT)
        return ContentItemCounts(total_items=len(items), text_items=texts, image_items=len(items) - texts)

    def compute_flattened_text_content(self, separator: str = " ") -> str:
        """The text items joined by ``separator`` (Oumi's; :attr:`text` joins them by newlines)."""
        return separator.join(i.content or "" for i in self.text_content_items)

    def contains_text(self) -> bool:
        return isinstance(self.content, str) or any(i.type == Type.TEXT for i in self.content or ())

    def contains_images(self) -> bool:
        return isinstance(self.content, list) and any(i.type != Type.TEXT for i in self.content)

    def contains_text_content_items_only(self) -> bool:
        """At least one item, all of them text."""
        counts = self.count_content_items()
        return counts.text_items > 0 and counts.text_items == counts.total_items

    def contains_image_content_items_only(self) -> bool:
        """At least one item, all of them images."""
        counts = self.count_content_items()
        return counts.image_items > 0 and counts.image_items == counts.total_items

    def contains_single_text_content_item_only(self) -> bool:
        counts = self.count_content_items()
        return counts.text_items == 1 and counts.total_items == 1

    def contains_single_image_content_item_only(self) -> bool:
        counts = self.count_content_items()
        return counts.image_items == 1 and counts.total_items == 1

    def __repr__(self) -> str:
        """Oumi's form: ``1 - USER: Hello`` (an id first when set), content items joined by `` | ``."""
        head = f"{self.id} - " if self.id else ""
        return f"{head}{self.role.value.upper()}: " + " | ".join(repr(i) for i in self.content_items)

    def to_json_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.id is not None:
            out["id"] = self.id
        if isinstance(self.content, list):
            out["content"] = [i.to_json_dict() for i in self.content]
        else:
            out["content"] = self.content
        out["role"] = self.role._value_  # ``.value`` is a Python-level property on enums: this runs per row
        if self.tool_calls is not None:
            out["tool_calls"] = [c.to_json_dict() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.reasoning_content is not None:
            out["reasoning_content"] = self.reasoning_content
        if self.__pydantic_extra__:
            out.update(self.__pydantic_extra__)
        return out


class _LastMessage(Message):
    """``conversation.last_message``: the last message itself (``.text``, ``.role``, ...), and also
    callable like Oumi's method, ``conversation.last_message(role=None)`` → the last message with that
    role, or None. For a conversation without messages it is falsy, its call returns None and reading a
    field raises ``IndexError``."""

    _messages: list[Message] = PrivateAttr(default_factory=list)

    def __call__(self, role: Role | str | None = None) -> Message | None:
        for message in reversed(self._messages):
            if role is None or message.role == role:
                return message
        return None

    def __bool__(self) -> bool:
        return bool(self._messages)

    def __repr__(self) -> str:
        return super().__repr__() if self._messages else "(no messages)"

    def __getattr__(self, name: str) -> Any:
        if name in Message.model_fields and not self._messages:
            raise IndexError(f"the conversation has no messages, so last_message has no {name!r}")
        return super().__getattr__(name)  # type: ignore[misc]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Message):  # equal to the plain message it stands for
            return self.__dict__ == other.__dict__ and (self.__pydantic_extra__ or {}) == (
                other.__pydantic_extra__ or {}
            )
        return NotImplemented

    __hash__ = Message.__hash__


class Conversation(BaseModel):
    """A list of messages with an optional id, the tools offered to the model, and free-form metadata.

    Like Oumi's, it may be changed after it is built (``conversation.messages.append(...)``; assigned
    fields are validated) and may have no messages yet; a job refuses a row without messages. ``tools``
    takes tools, OpenAI-style dicts or Python functions (see :mod:`infermux.tool_schema`). Keys not
    declared here are kept and written back.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    # The answer fields parsed from ``metadata`` (see ``usage``): a slot, not a pydantic private attribute,
    # so it costs nothing until read (a private attribute adds to every validation and copy) and it is no
    # part of equality, copies or pickles (they start without it).
    __slots__ = ("_answers",)

    conversation_id: str | None = None
    messages: list[Message]
    metadata: dict[str, Any] = Field(default_factory=dict)
    tools: list[Tool] | None = None
    """Function tools the model may call (OpenAI's ``tools`` shape)."""

    @field_validator("metadata", mode="before")
    @classmethod
    def _null_metadata(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("tools", mode="before")
    @classmethod
    def _tools_from_functions(cls, value: Any) -> Any:
        if not isinstance(value, list) or all(isinstance(t, (dict, Tool)) for t in value):
            return value
        from infermux.tool_schema import get_json_schema

        out = []
        for tool in value:
            if isinstance(tool, (dict, Tool)):
                out.append(tool)
            elif callable(tool):
                out.append(get_json_schema(tool))
            else:
                raise ValueError(
                    f"each tool must be a Tool, a dict (OpenAI's tool schema) or a Python function (a callable); "
                    f"got {type(tool).__name__}"
                )
        return out

    def __getitem__(self, index: int) -> Message:
        return self.messages[index]

    def __repr__(self) -> str:
        """Oumi's form: one ``ROLE: text`` line per message."""
        return "\n".join(repr(m) for m in self.messages)

    @property
    def last_message(self) -> _LastMessage:
        """The last message; also callable as ``last_message(role=None)`` (Oumi's method form)."""
        proxy = _new(_LastMessage)
        if self.messages:
            last = self.messages[-1]
            _set_dict(proxy, dict(last.__dict__))
            _set_fields_set(proxy, last.__pydantic_fields_set__)
            _set_extra(proxy, last.__pydantic_extra__)
        else:
            _set_dict(proxy, {})
            _set_fields_set(proxy, set())
            _set_extra(proxy, None)
        _set_private(proxy, {"_messages": self.messages})
        return proxy

    def append_id_to_string(self, s: str) -> str:
        """``s`` followed by ``Conversation id: ID.`` (for log and error messages); ``s`` alone without an id."""
        if not self.conversation_id:
            return s
        suffix = f"Conversation id: {self.conversation_id}."
        return f"{s.strip()} {suffix}" if s else suffix

    def first_message(self, role: Role | str | None = None) -> Message | None:
        """The first message (with ``role``, when given), or None."""
        return next((m for m in self.messages if role is None or m.role == role), None)

    def filter_messages(
        self, role: Role | str | None = None, *, filter_fn: Callable[[Message], bool] | None = None
    ) -> list[Message]:
        """The messages with ``role`` (all when None) for which ``filter_fn`` (when given) is true."""
        return [m for m in self.messages if (role is None or m.role == role) and (filter_fn is None or filter_fn(m))]

    @property
    def has_images(self) -> bool:
        for message in self.messages:  # noqa: SIM110 (a loop, not any(): this runs for every row a job checks)
            if type(message.content) is list and message.images:  # only list content holds images
                return True
        return False

    # The answer, read back from ``metadata`` (its stored, Oumi-compatible form, written by ``with_reply``
    # and the job): each field parsed on first read and kept with the stored value it came from, so a
    # read after ``metadata[key]`` is replaced parses again. Stored values are replaced, never edited.

    @property
    def usage(self) -> Usage | None:
        """The answer's token counts (``metadata["usage"]``), or None when the row has none."""
        return self._answer_field("usage", Usage.from_json_dict)

    @property
    def finish_reason(self) -> FinishReason | None:
        """Why the answer ended (``metadata["finish_reason"]``, normalised), or None."""
        return self._answer_field("finish_reason", FinishReason.parse)

    @property
    def samples(self) -> list[Sample] | None:
        """The answers kept with the row (``metadata["samples"]``: several per prompt, or with
        log-probabilities), or None when the row keeps none. Do not edit the list."""
        return self._answer_field("samples", Sample.from_json_list)

    @property
    def cost_usd(self) -> float | None:
        """The row's price in dollars (``metadata["cost_usd"]``, written by a priced job), or None."""
        return self._answer_field("cost_usd", _read_cost)

    def answer_counts(self) -> tuple[int, int, bool]:
        """(prompt tokens, completion tokens, whether the answer stopped at the token limit), unknown
        counts as 0: what a job counts for every answered row. Read from ``metadata`` as :attr:`usage` and
        :attr:`finish_reason` read it, without keeping the parsed fields on the row (a job keeps its
        answered rows: per-row objects that live on cost collection time)."""
        metadata = self.metadata
        p, c = Usage.stored_counts(metadata.get("usage"))
        prompt, completion = p or 0, c or 0
        reason = metadata.get("finish_reason")
        if reason is None or reason == "stop":  # the common answers, without the normaliser
            return prompt, completion, False
        return prompt, completion, FinishReason.parse(reason) is FinishReason.LENGTH

    @property
    def cached(self) -> bool:
        """Whether the job answered the row from its answer cache (``metadata["cached"] is True``)."""
        return self.metadata.get("cached") is True

    def _answer_field(self, key: str, parse: Callable[[Any], _T]) -> _T:
        """``parse(metadata.get(key))``, kept with the stored value it was parsed from (key -> (stored,
        parsed)), so a later read of the same stored value does not parse again."""
        stored = self.metadata.get(key)
        try:
            answers: dict[str, tuple[Any, Any]] = _get_answers(self)
        except AttributeError:  # the first read
            answers = {}
            _set_answers(self, answers)
        seen = answers.get(key)
        if seen is not None and seen[0] is stored:
            return seen[1]  # type: ignore[no-any-return]
        value = parse(stored)
        answers[key] = (stored, value)
        return value

    def with_reply(
        self,
        text: str | None,
        metadata: dict[str, Any] | None = None,
        *,
        usage: Usage | None = None,
        finish_reason: FinishReason | str | None = None,
        tool_calls: list[ToolCall] | None = None,
        reasoning_content: str | None = None,
    ) -> Conversation:
        """Return a copy ending with an assistant message: ``text``, the ``tool_calls`` it makes and the
        ``reasoning_content`` that came with it. An answer that only calls tools has null content.

        ``metadata`` (model, ...) is merged into the conversation metadata; ``usage`` and ``finish_reason``
        go in as ``metadata["usage"]`` (a dict) and ``metadata["finish_reason"]`` (a string), normalised.
        """
        merged = {**self.metadata, **metadata} if metadata else dict(self.metadata)
        if usage is not None:
            merged["usage"] = usage.to_json_dict()
        if finish_reason is not None or "finish_reason" in merged:
            raw = finish_reason if finish_reason is not None else merged["finish_reason"]
            reason = raw if type(raw) is FinishReason else FinishReason.parse(raw)
            merged["finish_reason"] = reason._value_ if reason is not None else None
        content = None if tool_calls and not text else (text or "")
        reasoning = reasoning_content or None
        answer: Message
        if not tool_calls and type(content) is str and (reasoning is None or type(reasoning) is str):
            # A text answer (every row of most jobs): these values are valid as they are, so the
            # message is built without a validation pass (the same fields as below).
            fields = {"id": None, "role": Role.ASSISTANT, "content": content, "tool_calls": None,
                      "tool_call_id": None, "reasoning_content": reasoning}  # fmt: skip
            answer = _unvalidated(Message, fields, set(_ANSWER_FIELDS))
        else:
            answer = Message(role=Role.ASSISTANT, content=content, tool_calls=tool_calls or None,
                             reasoning_content=reasoning)  # fmt: skip
        values = {**self.__dict__, "messages": [*self.messages, answer], "metadata": merged}
        return _unvalidated(type(self), values, self.__pydantic_fields_set__ | _REPLY_CHANGES, self.__pydantic_extra__)

    def replace(self, **changes: Any) -> Conversation:
        """A copy with ``changes`` (field names and already valid values: no validation pass, as
        ``model_copy``, in a third of its time; this runs at least once for every answered row)."""
        values = {**self.__dict__, **changes}
        return _unvalidated(type(self), values, self.__pydantic_fields_set__ | changes.keys(), self.__pydantic_extra__)

    def to_json_dict(self) -> dict[str, Any]:
        """The Oumi-compatible JSON object for this conversation: ``conversation_id`` and ``metadata`` only
        when given or set (a row without them comes back without them), ``tools`` when there are tools,
        then the keys kept from the input."""
        given = self.__pydantic_fields_set__
        out: dict[str, Any] = {}
        if self.conversation_id is not None or "conversation_id" in given:
            out["conversation_id"] = self.conversation_id
        out["messages"] = [m.to_json_dict() for m in self.messages]
        if self.metadata or "metadata" in given:
            out["metadata"] = self.metadata
        if self.tools is not None:
            out["tools"] = [t.to_json_dict() for t in self.tools]
        if self.__pydantic_extra__:
            out.update(self.__pydantic_extra__)
        return out

    @classmethod
    def from_json_dict(cls, data: Any) -> Conversation:
        return cls.model_validate(data)

    # Oumi's names for the same conversions.
    def to_dict(self) -> dict[str, Any]:
        """The JSON object for this conversation (Oumi's name; same as :meth:`to_json_dict`)."""
        return self.to_json_dict()

    @classmethod
    def from_dict(cls, data: Any) -> Conversation:
        return cls.model_validate(data)

    def to_json(self) -> str:
        """One JSONL line's worth of JSON for this conversation, compact as Oumi writes it."""
        return json.dumps(self.to_json_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, data: str | bytes) -> Conversation:
        return cls.model_validate_json(data)


_ANSWER_FIELDS = frozenset({"role", "content", "tool_calls", "reasoning_content"})
_REPLY_CHANGES = frozenset({"messages", "metadata"})

_M = TypeVar("_M", bound=BaseModel)


def _unvalidated(
    cls: type[_M], values: dict[str, Any], fields_set: set[str], extra: dict[str, Any] | None = None
) -> _M:
    """An instance of ``cls`` (a model without private attributes) holding ``values`` (every field, already
    valid) and the undeclared keys ``extra`` (copied) as they are: what ``model_construct`` does, without
    its per-field loop."""
    obj = _new(cls)
    _set_dict(obj, values)
    _set_fields_set(obj, fields_set)
    _set_extra(obj, dict(extra) if extra else None)
    _set_private(obj, None)
    return obj


def _read_cost(stored: Any) -> float | None:
    return float(stored) if isinstance(stored, int | float) and not isinstance(stored, bool) else None


# The setters of BaseModel's own slots, called directly: ``object.__setattr__`` does the same after a
# lookup and an argument copy (this runs for every answered row).
_new = object.__new__
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__
# The slot of a Conversation's parsed answer fields (unset until the first read).
_get_answers = Conversation.__dict__["_answers"].__get__
_set_answers = Conversation.__dict__["_answers"].__set__
