"""Validation and replies for OpenAI-style chat-completions bodies.

Shared by the Vertex fake (Google's OpenAI-compatible endpoint) and the OpenAI Batch fake
(each batch line carries a chat-completions body). Written from OpenAI's "Create chat
completion" reference: ``messages`` of ``system``/``developer``/``user``/``assistant``/``tool``
roles; user content as a string or an array of ``text`` / ``image_url`` parts; optional
sampling fields; ``response_format`` of type ``text``, ``json_object`` or ``json_schema``.
"""

from __future__ import annotations

import time
from typing import Any

from ._server import (
    Exchange,
    RequestInvalid,
    Responder,
    apply_stops,
    check_keys,
    check_range,
    check_type,
    truncate_words,
)

#: Parameters of OpenAI's chat completions create call that these fakes understand.
OPENAI_CHAT_PARAMS = {
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "stream",
    "stream_options",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "response_format",
    "tools",
    "tool_choice",
    "user",
    "reasoning_effort",
    "metadata",
    "store",
    "parallel_tool_calls",
    "service_tier",
}
_ROLES = {"system", "developer", "user", "assistant", "tool"}
_MESSAGE_FIELDS = {"role", "content", "name", "tool_calls", "tool_call_id", "refusal"}


def validate_chat_body(
    body: Any,
    *,
    allowed: set[str] = OPENAI_CHAT_PARAMS,
    image_url_schemes: tuple[str, ...] = ("http://", "https://", "data:image/"),
    image_detail: bool = True,
) -> Exchange:
    """Check a chat-completions body; return what the model would see."""
    check_keys(body, "body", allowed, {"model", "messages"})
    check_type(body["model"], "model", str)
    messages = check_type(body["messages"], "messages", list)
    if not messages:
        raise RequestInvalid("messages: must contain at least one message")
    system: list[str] = []
    turns: list[tuple[str, str]] = []
    images = 0
    for i, message in enumerate(messages):
        check_keys(message, f"messages[{i}]", _MESSAGE_FIELDS, {"role"})
        role = message["role"]
        if role not in _ROLES:
            raise RequestInvalid(f"messages[{i}].role: '{role}' is not one of {sorted(_ROLES)}")
        text, n_images = _content(message.get("content"), f"messages[{i}].content", image_url_schemes, image_detail)
        if n_images and role != "user":
            raise RequestInvalid(f"messages[{i}]: image parts are only allowed in user messages")
        images += n_images
        if role in ("system", "developer"):
            system.append(text)
        else:
            turns.append((role, text))
    for name, lo, hi in (
        ("temperature", 0.0, 2.0),
        ("top_p", 0.0, 1.0),
        ("presence_penalty", -2.0, 2.0),
        ("frequency_penalty", -2.0, 2.0),
    ):
        if name in body:
            check_range(body[name], name, lo, hi)
    for name in ("max_tokens", "max_completion_tokens", "n", "seed"):
        if name in body and body[name] is not None:
            check_type(body[name], name, int)
    if "stop" in body and body["stop"] is not None:
        stops = body["stop"]
        if isinstance(stops, str):
            stops = [stops]
        check_type(stops, "stop", list)
        if len(stops) > 4:
            raise RequestInvalid("stop: at most 4 stop sequences are allowed")
    schema = _response_format(body.get("response_format"))
    return Exchange(system="\n".join(system) or None, turns=turns, images=images, schema=schema)


def _content(content: Any, where: str, schemes: tuple[str, ...], detail: bool) -> tuple[str, int]:
    if content is None or isinstance(content, str):
        return content or "", 0
    check_type(content, where, list)
    texts: list[str] = []
    images = 0
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            check_keys(part, f"{where}[{j}]", {"type", "text"}, {"type", "text"})
            texts.append(check_type(part["text"], f"{where}[{j}].text", str))
        elif kind == "image_url":
            check_keys(part, f"{where}[{j}]", {"type", "image_url"}, {"type", "image_url"})
            allowed = {"url", "detail"} if detail else {"url"}
            check_keys(part["image_url"], f"{where}[{j}].image_url", allowed, {"url"})
            url = check_type(part["image_url"]["url"], f"{where}[{j}].image_url.url", str)
            if not url.startswith(schemes):
                raise RequestInvalid(f"{where}[{j}].image_url.url: unsupported image URL {url[:40]!r}")
            images += 1
        else:
            raise RequestInvalid(f"{where}[{j}].type: unsupported content part type {kind!r}")
    return "".join(texts), images


def _response_format(fmt: Any) -> dict | None:
    if fmt is None:
        return None
    check_keys(fmt, "response_format", {"type", "json_schema"}, {"type"})
    if fmt["type"] in ("text", "json_object"):
        return None if fmt["type"] == "text" else {"type": "object"}
    if fmt["type"] != "json_schema":
        raise RequestInvalid(f"response_format.type: unknown type {fmt['type']!r}")
    spec = check_keys(
        fmt.get("json_schema"), "response_format.json_schema", {"name", "schema", "strict", "description"}, {"name"}
    )
    return check_type(spec.get("schema", {"type": "object"}), "response_format.json_schema.schema", dict)


def chat_completion(body: dict, exchange: Exchange, responder: Responder, completion_id: str) -> dict:
    """The chat.completion object a server would return for ``body``."""
    text = responder(exchange)
    stops = body.get("stop")
    text, matched = apply_stops(text, [stops] if isinstance(stops, str) else stops)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    text, truncated = truncate_words(text, limit)
    prompt_tokens = sum(len(t.split()) for _, t in exchange.turns) + len((exchange.system or "").split())
    completion_tokens = len(text.split())
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "length" if truncated and matched is None else "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
