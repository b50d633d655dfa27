"""OpenAI chat-completion answers on the wire: completion objects, stream chunks, usage, finish reasons,
tool calls and log-probabilities, from an engine's :class:`~infermux.types.Conversation` (requests come
in through :mod:`infermux.serve.wire`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from infermux.types import FinishReason, Message, Sample, TokenLogprob, TopLogprob, Usage

__all__ = [
    "Choice",
    "choices_of",
    "chunk",
    "completion",
    "finish_reason_of",
    "logprobs_of",
    "new_id",
    "now",
    "openai_finish_reason",
    "openai_usage",
    "tool_calls_of",
    "usage_of",
]


def new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def usage_of(metadata: dict[str, Any]) -> dict[str, int] | None:
    """OpenAI's ``usage`` object for an answer's stored ``metadata`` (None: unknown)."""
    return openai_usage(Usage.from_json_dict(metadata.get("usage")))


def openai_usage(usage: Usage | None) -> dict[str, int] | None:
    """OpenAI's ``usage`` object: prompt, completion and total tokens; None (JSON null, which OpenAI's
    schema allows) when the engine or upstream reported none: an unknown count is not zero, and a client
    that bills from it must not see the answer as free."""
    if usage is None or usage.prompt_tokens is None or usage.completion_tokens is None:
        return None
    prompt, done = usage.prompt_tokens, usage.completion_tokens
    return Usage.of(prompt, done, prompt + done).to_json_dict()


_OPENAI_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter"})


def finish_reason_of(metadata: dict[str, Any]) -> str:
    """OpenAI's finish reason for an answer (ours has ``error``/``unknown`` too, which OpenAI has not)."""
    return openai_finish_reason(FinishReason.parse(metadata.get("finish_reason")))


def openai_finish_reason(reason: FinishReason | None) -> str:
    """OpenAI's spelling of ``reason``: ``stop`` for none and for the reasons OpenAI has not."""
    return reason.value if reason is not None and reason.value in _OPENAI_REASONS else "stop"


def tool_calls_of(message: Message | None) -> list[dict[str, Any]] | None:
    """The answer's tool calls in OpenAI's shape, or None."""
    if message is None or not message.tool_calls:
        return None
    return [call.to_json_dict() for call in message.tool_calls]


@dataclass
class Choice:
    """One answer of a completion: its text, tool calls, finish reason and OpenAI-shaped log-probabilities."""

    text: str
    tool_calls: list[dict[str, Any]] | None
    finish_reason: str
    logprobs: dict[str, Any] | None = None


def choices_of(text: str, metadata: dict[str, Any], tool_calls: list[dict[str, Any]] | None) -> list[Choice]:
    """The answer's choices: one per entry of ``metadata["samples"]`` (n > 1, logprobs), else the one answer."""
    samples = Sample.from_json_list(metadata.get("samples"))
    if not samples:
        return [Choice(text, tool_calls, finish_reason_of(metadata))]
    return [
        Choice(s.text, s.tool_calls or None, openai_finish_reason(s.finish_reason), logprobs_of(s.logprobs))
        for s in samples
    ]


def logprobs_of(tokens: Sequence[TokenLogprob | dict[str, Any]] | None) -> dict[str, Any] | None:
    """A sample's :class:`~infermux.types.TokenLogprob` entries (or their JSON) in OpenAI's
    ``choices[i].logprobs`` shape."""
    if tokens is None:
        return None

    def entry(token: TokenLogprob | TopLogprob) -> dict[str, Any]:
        return {"token": token.token, "logprob": token.logprob, "bytes": _bytes_of(token.token, token.bytes)}

    typed = [t if isinstance(t, TokenLogprob) else TokenLogprob.model_validate(t) for t in tokens]
    content = [{**entry(t), "top_logprobs": [entry(a) for a in t.top_logprobs]} for t in typed]
    return {"content": content, "refusal": None}


def _bytes_of(text: str, raw: list[int] | None) -> list[int] | None:
    """A token's own bytes as the engine recorded them; for rows without them (older rows, providers
    that send only text) the text's UTF-8, unless the text is lossy (U+FFFD): then ``null``, as OpenAI
    allows, rather than the bytes of a replacement character."""
    if raw is not None:
        return list(raw)
    return None if "\ufffd" in text else list(text.encode("utf-8"))


def completion(
    cid: str,
    model: str,
    created: int,
    text: str,
    metadata: dict[str, Any],
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    choices = []
    for index, choice in enumerate(choices_of(text, metadata, tool_calls)):
        content = choice.text if choice.text or not choice.tool_calls else None
        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
        if choice.tool_calls:
            message["tool_calls"] = choice.tool_calls
        choices.append(
            {"index": index, "message": message, "logprobs": choice.logprobs, "finish_reason": choice.finish_reason}
        )
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage_of(metadata),
    }


def chunk(
    cid: str,
    model: str,
    created: int,
    delta: dict[str, Any] | None,
    finish_reason: str | None = None,
    usage: dict[str, int] | None = None,
    include_usage: bool = False,
    *,
    index: int = 0,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
    out["choices"] = (
        []
        if delta is None
        else [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]
    )
    if include_usage:
        out["usage"] = usage
    return out


def now() -> int:
    return int(time.time())
