"""OpenAI chat-completions format: infermux conversations and parameters in, answers out.

Pure functions, shared by every engine that speaks this protocol (REMOTE, REMOTE_VLLM, the hosted
providers, and any other protocol adapter that needs the same message or image encoding).
"""

from __future__ import annotations

import re
from typing import Any

from infermux.configs.generation_params import GenerationParams, GuidedDecodingParams
from infermux.engines.remote.http.urls import endpoint_url
from infermux.engines.remote.media import image_payload
from infermux.engines.tool_calls import new_call_id, whole_calls
from infermux.samples import reply_with_samples, token_logprob
from infermux.types import (
    ContentItem,
    Conversation,
    FinishReason,
    Message,
    Role,
    Sample,
    TokenLogprob,
    Tool,
    ToolCall,
    Type,
    Usage,
)

__all__ = [
    "chat_completions_url",
    "choice_logprobs",
    "choice_samples",
    "encode_message",
    "encode_messages",
    "encode_tool",
    "encode_tool_call",
    "generation_fields",
    "image_data_url",
    "json_response_format",
    "parse_chat_completion",
    "parse_tool_calls",
    "tool_fields",
]

CHAT_PATH = "/chat/completions"


def chat_completions_url(api_url: str) -> str:
    """The chat-completions endpoint for a base URL (``http://host:port``, ``.../v1``) or a full URL.

    ``http://host:8000`` → ``http://host:8000/v1/chat/completions``; ``https://x/v1`` or any other
    path → that path + ``/chat/completions``; a URL already ending in ``/chat/completions`` is kept.
    Query strings (``?api-version=...``) are preserved.
    """
    return endpoint_url(api_url, lambda path: path if path.endswith(CHAT_PATH) else (path or "/v1") + CHAT_PATH)


# ---------------------------------------------------------------------- messages and images


def image_data_url(item: ContentItem) -> str:
    """An ``image_url`` value for an image item: URLs as given, files and bytes (``binary`` first, as
    :func:`~infermux.engines.remote.media.image_payload` decides) as base64 data URLs."""
    if item.type == Type.IMAGE_URL and not item.binary:
        return str(item.content)
    image = image_payload(item)
    if image.data is None:
        return str(image.url)
    return f"data:{image.media_type or 'image/png'};base64,{image.base64}"


def encode_message(message: Message, *, role: str | None = None) -> dict[str, Any]:
    """One message: plain string content when it is text only, else text and ``image_url`` parts; an
    assistant turn's ``tool_calls`` and a tool turn's ``tool_call_id`` as OpenAI names them."""
    content = message.content
    if isinstance(content, list):
        if any(item.is_image() for item in content):
            content_out: Any = [
                {"type": "image_url", "image_url": {"url": image_data_url(item)}}
                if item.is_image()
                else {"type": "text", "text": item.content or ""}
                for item in content
            ]
        else:
            content_out = message.text
    else:
        content_out = content
    out: dict[str, Any] = {"role": role or message.role._value_, "content": content_out}  # _value_: no property call
    if message.tool_calls:
        out["tool_calls"] = [encode_tool_call(call) for call in message.tool_calls]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def encode_tool_call(call: ToolCall) -> dict[str, Any]:
    """A call in a request's history: OpenAI's fields only (keys kept from other providers stay home)."""
    function = {"name": call.function.name, "arguments": call.function.arguments}
    out: dict[str, Any] = {"type": "function", "function": function}
    if call.id is not None:
        out["id"] = call.id
    return out


def encode_messages(messages: list[Message], *, system_role: str | None = None) -> list[dict[str, Any]]:
    """The ``messages`` of a request. Calls without an id get one (``call_<turn>_<n>``) and a tool turn
    without ``tool_call_id`` answers the next unanswered call, so data written without ids still makes a
    request OpenAI-compatible servers accept."""
    out: list[dict[str, Any]] = []
    pending: list[str] = []
    for turn, message in enumerate(messages):
        encoded = encode_message(message, role=system_role if system_role and message.role == Role.SYSTEM else None)
        if message.tool_calls:
            pending = []
            for n, call in enumerate(encoded["tool_calls"]):
                call.setdefault("id", f"call_{turn}_{n}")
                pending.append(call["id"])
        elif pending and message.role == Role.TOOL:  # (a tool turn with no call before it is kept as is)
            if "tool_call_id" not in encoded:
                encoded["tool_call_id"] = pending[0]
            if encoded.get("tool_call_id") in pending:
                pending.remove(encoded["tool_call_id"])
        out.append(encoded)
    return out


_FUNCTION_FIELDS = ("name", "description", "parameters", "strict")


def encode_tool(tool: Tool) -> dict[str, Any]:
    """A tool as OpenAI defines one (``name``, ``description``, ``parameters``, ``strict``); other keys a
    conversation carries stay in the data but are not sent (OpenAI rejects unknown fields)."""
    given = tool.function.to_json_dict()
    return {"type": "function", "function": {k: given[k] for k in _FUNCTION_FIELDS if k in given}}


def tool_fields(conversation: Conversation, generation: GenerationParams) -> dict[str, Any]:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls`` for a conversation that offers tools
    (servers reject ``tool_choice`` without ``tools``, so none is sent without them)."""
    if not conversation.tools:
        return {}
    out: dict[str, Any] = {"tools": [encode_tool(tool) for tool in conversation.tools]}
    if generation.tool_choice is not None:
        out["tool_choice"] = generation.tool_choice
    if not generation.parallel_tool_calls:
        out["parallel_tool_calls"] = False
    return out


# ---------------------------------------------------------------------- generation parameters

_NAME_OK = re.compile(r"[^a-zA-Z0-9_-]")


def json_response_format(guided: GuidedDecodingParams) -> dict[str, Any]:
    """``response_format`` for a JSON-schema constraint (OpenAI's structured outputs shape)."""
    schema = guided.schema_dict() or {}
    name = _NAME_OK.sub("_", str(schema.get("title") or "output"))[:64] or "output"
    spec: dict[str, Any] = {"name": name, "schema": schema}
    if guided.strict is not None:
        spec["strict"] = guided.strict
    return {"type": "json_schema", "json_schema": spec}


def generation_fields(
    generation: GenerationParams, supported: frozenset[str] | set[str], *, max_tokens_field: str = "max_tokens"
) -> dict[str, Any]:
    """Body fields for ``generation``, limited to the parameters in ``supported``.

    ``max_new_tokens`` and ``temperature`` are always sent (servers' own defaults differ from
    infermux's greedy default); the others only when they differ from their neutral value.
    """
    g = generation
    out: dict[str, Any] = {max_tokens_field: g.max_new_tokens}
    if "temperature" in supported:
        out["temperature"] = g.temperature
    optional: tuple[tuple[str, str, Any, Any], ...] = (
        ("top_p", "top_p", g.top_p, 1.0),
        ("frequency_penalty", "frequency_penalty", g.frequency_penalty, 0.0),
        ("presence_penalty", "presence_penalty", g.presence_penalty, 0.0),
        ("stop_strings", "stop", g.stop_strings, None),
        ("seed", "seed", g.seed, None),
        ("logit_bias", "logit_bias", g.logit_bias or None, None),
        ("min_p", "min_p", g.min_p, 0.0),
        ("stop_token_ids", "stop_token_ids", g.stop_token_ids, None),
        ("n", "n", g.n, 1),
        ("logprobs", "logprobs", g.logprobs, False),
        ("top_logprobs", "top_logprobs", g.top_logprobs, 0),
    )
    for param, field, value, neutral in optional:
        if param in supported and value != neutral:
            out[field] = value
    if g.guided_decoding is not None and g.guided_decoding.kind == "json":
        out["response_format"] = json_response_format(g.guided_decoding)
    return out


# ---------------------------------------------------------------------- replies


def parse_tool_calls(raw: Any) -> list[ToolCall] | None:
    """A reply's ``tool_calls`` (None when there are none); raises on a malformed list. A call the server
    sent without an id gets a fresh one (a call needs one, as in Oumi, for the tool turn to name it)."""
    if not raw:
        return None
    if not isinstance(raw, list):
        raise TypeError(f"message.tool_calls is {type(raw).__name__}, expected a list")
    return [
        ToolCall.model_validate(
            {**call, "id": new_call_id()} if isinstance(call, dict) and not call.get("id") else call
        )
        for call in raw
    ]


def finish_reason_for(reason: Any, tool_calls: list[ToolCall] | None) -> Any:
    """The finish reason, ``tool_calls`` when the answer is a call that ended normally (vLLM says ``stop``
    for a call it was made to produce)."""
    return "tool_calls" if tool_calls and reason in (None, "stop") else reason


def parse_chat_completion(data: Any) -> tuple[str, dict[str, Any], list[ToolCall] | None, str | None]:
    """(answer text, metadata, tool calls, reasoning) from a chat-completion reply; raises on a malformed one.

    Metadata keeps ``usage``, ``finish_reason``, ``model``, and ``refusal`` and ``service_tier`` (the tier
    that answered: OpenAI's ``default``, ``flex``, ``priority``) when the server sends them;
    reasoning is read from ``reasoning_content`` (vLLM, DeepSeek, llama.cpp) or ``reasoning``. An empty
    ``choices`` list is a content-filter block (``finish_reason: content_filter``), not a malformed reply.
    """
    if not isinstance(data, dict):
        raise TypeError(f"expected a JSON object, got {type(data).__name__}")
    if data.get("choices") == [] and (data.get("object") == "chat.completion" or "prompt_filter_results" in data):
        # A content filter blocked the answer (Azure OpenAI and gateways answer a complete
        # chat.completion with no choice): a finish reason, not a malformed reply to retry.
        blocked: dict[str, Any] = {"finish_reason": "content_filter", "model": data.get("model")}
        if data.get("prompt_filter_results"):
            blocked["prompt_filter_results"] = data["prompt_filter_results"]
        return "", blocked, None, None
    choice = data["choices"][0]
    message = choice["message"]
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise TypeError(f"message.content is {type(content).__name__}, expected a string")
    raw_calls = message.get("tool_calls")
    reason = choice.get("finish_reason")
    tool_calls = whole_calls(parse_tool_calls(raw_calls), reason) if raw_calls else None
    metadata: dict[str, Any] = {
        "finish_reason": FinishReason.parse(finish_reason_for(reason, tool_calls) if tool_calls else reason),
        "model": data.get("model"),
    }
    usage = Usage.openai_json(data.get("usage"))
    if usage is not None:
        metadata["usage"] = usage
    if message.get("refusal"):
        metadata["refusal"] = message["refusal"]
    tier = data.get("service_tier")
    if isinstance(tier, str):
        metadata["service_tier"] = tier
    reasoning = message.get("reasoning_content") or message.get("reasoning") or None
    return content or "", metadata, tool_calls, reasoning


def choice_logprobs(choice: dict[str, Any]) -> list[TokenLogprob] | None:
    """A choice's ``logprobs.content`` as typed token log-probabilities (None when not sent)."""
    content = (choice.get("logprobs") or {}).get("content")
    if content is None:
        return None
    return [
        token_logprob(_piece(t), t["logprob"], [(_piece(a), a["logprob"]) for a in t.get("top_logprobs") or []])
        for t in content
    ]


def _piece(token: dict[str, Any]) -> tuple[str, list[int] | None]:
    # The server's ``bytes`` are the token's own (a token may be part of a character): kept as sent.
    raw = token.get("bytes")
    return token["token"], [int(b) for b in raw] if isinstance(raw, list) else None


def choice_samples(data: dict[str, Any]) -> list[Sample]:
    """Every choice of a reply (``n`` > 1) as a :class:`Sample`, in ``index`` order."""
    samples = []
    for choice in sorted(data["choices"], key=lambda c: c.get("index", 0)):
        message = choice.get("message") or {}
        samples.append(
            Sample(
                text=message.get("content") or "",
                finish_reason=FinishReason.parse(choice.get("finish_reason")),
                tool_calls=message.get("tool_calls") or None,
                logprobs=choice_logprobs(choice),
            )
        )
    return samples


def reply(conversation: Conversation, data: Any) -> Conversation:
    """``conversation`` answered with the reply in ``data`` (all its choices as samples when n > 1)."""
    text, metadata, tool_calls, reasoning = parse_chat_completion(data)
    choices = data["choices"]  # a list (parse_chat_completion read it); empty: a content-filter block
    # The common answer (one choice, no log-probabilities) skips building samples.
    if len(choices) > 1 or (choices and choices[0].get("logprobs")):
        samples = choice_samples(data)
        if len(samples) > 1 or samples[0].logprobs is not None:
            usage = metadata.pop("usage", None)
            return reply_with_samples(conversation, samples, metadata, usage=Usage(**usage) if usage else None,
                                      tool_calls=tool_calls, reasoning_content=reasoning)  # fmt: skip
    return conversation.with_reply(text, metadata, tool_calls=tool_calls, reasoning_content=reasoning)
