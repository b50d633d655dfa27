"""Validation and replies for OpenAI-style chat-completions bodies.

Shared by the Vertex fake (Google's OpenAI-compatible endpoint) and the OpenAI Batch fake
(each batch line carries a chat-completions body). Written from OpenAI's "Create chat
completion" reference: ``messages`` of ``system``/``developer``/``user``/``assistant``/``tool``
roles; user content as a string or an array of ``text`` / ``image_url`` parts; optional
sampling fields; ``response_format`` of type ``text``, ``json_object`` or ``json_schema``.

Function calling, from the same reference and OpenAI's function-calling guide:

* ``tools``: at most 128 ``{"type": "function", "function": {"name", "description"?, "parameters"?,
  "strict"?}}``; a name matches ``^[a-zA-Z0-9_-]{1,64}$``; ``parameters`` is a JSON-schema object.
* ``tool_choice``: ``none`` | ``auto`` | ``required`` | ``{"type": "function", "function": {"name"}}``
  naming one of the tools; ``tool_choice`` and ``parallel_tool_calls`` (a boolean) are only allowed
  with ``tools``.
* An assistant message may leave ``content`` null (or out) when it has ``tool_calls``: each
  ``{"id", "type": "function", "function": {"name", "arguments"}}`` with ``arguments`` a string. It must
  be followed by one ``tool`` message per call, each with the ``tool_call_id`` it answers; a ``tool``
  message that answers no pending call is rejected.
* The model answers with ``message.tool_calls`` (``content`` null) and ``finish_reason:
  "tool_calls"``: here when ``tool_choice`` is ``required`` (every tool once, or only the first when
  ``parallel_tool_calls`` is false) or names a function, and under ``auto`` when the last turn is a
  user turn and the user text names a tool. Arguments are sampled from the tool's ``parameters``.

``n`` (1-128) gives n choices, each from its own call of the responder (``index`` 0..n-1).
``logprobs: true`` adds ``choices[i].logprobs = {"content": [...], "refusal": null}``: one
``{"token", "logprob", "bytes", "top_logprobs"}`` entry per answer token (a word and the space after
it, here), with ``top_logprobs`` (0-20, only valid with ``logprobs: true``) alternatives, the
chosen token first; a choice without logprobs has ``"logprobs": null``.
"""

from __future__ import annotations

import json
import re
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
    sample_from_schema,
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
#: ``service_tier`` values of the reference; the reply names the tier that answered (``auto``: ``default``).
SERVICE_TIERS = ("auto", "default", "flex", "priority")
_MESSAGE_FIELDS = {"role", "content", "name", "tool_calls", "tool_call_id", "refusal"}
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


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
    if body.get("service_tier") not in (None, *SERVICE_TIERS):
        raise RequestInvalid(f"service_tier: '{body['service_tier']}' is not one of {list(SERVICE_TIERS)}")
    messages = check_type(body["messages"], "messages", list)
    if not messages:
        raise RequestInvalid("messages: must contain at least one message")
    system: list[str] = []
    turns: list[tuple[str, str]] = []
    images = 0
    pending: list[str] = []  # call ids still waiting for their tool message
    for i, message in enumerate(messages):
        check_keys(message, f"messages[{i}]", _MESSAGE_FIELDS, {"role"})
        role = message["role"]
        if role not in _ROLES:
            raise RequestInvalid(f"messages[{i}].role: '{role}' is not one of {sorted(_ROLES)}")
        pending = _check_tool_turn(message, i, pending)
        if message.get("content") is None and not message.get("tool_calls"):
            raise RequestInvalid(f"messages[{i}].content: required unless the assistant message has tool_calls")
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
    for name in ("max_tokens", "max_completion_tokens", "n", "seed", "top_logprobs"):
        if name in body and body[name] is not None:
            check_type(body[name], name, int)
    if body.get("n") is not None:
        check_range(body["n"], "n", 1, 128)
    if body.get("logprobs") is not None:
        check_type(body["logprobs"], "logprobs", bool)
    if body.get("top_logprobs") is not None:
        check_range(body["top_logprobs"], "top_logprobs", 0, 20)
        if not body.get("logprobs"):
            raise RequestInvalid("top_logprobs: requires logprobs to be set to true")
    if "stop" in body and body["stop"] is not None:
        stops = body["stop"]
        if isinstance(stops, str):
            stops = [stops]
        check_type(stops, "stop", list)
        if len(stops) > 4:
            raise RequestInvalid("stop: at most 4 stop sequences are allowed")
    if pending:
        raise RequestInvalid(
            "messages: an assistant message with 'tool_calls' must be followed by tool messages responding to "
            f"each 'tool_call_id'. The following tool_call_ids did not have response messages: {', '.join(pending)}"
        )
    tools = _tools(body)
    if "user" in body:
        check_type(body["user"], "user", str)
    schema = _response_format(body.get("response_format"))
    return Exchange(system="\n".join(system) or None, turns=turns, images=images, schema=schema, tools=tools)


def _check_tool_turn(message: dict, i: int, pending: list[str]) -> list[str]:
    """Check an assistant's ``tool_calls`` and a tool message's ``tool_call_id``; return the pending ids."""
    role = message["role"]
    if role == "tool":
        call_id = check_type(message.get("tool_call_id"), f"messages[{i}].tool_call_id", str)
        if call_id not in pending:
            raise RequestInvalid(
                f"messages[{i}]: messages with role 'tool' must be a response to a preceding message with "
                f"'tool_calls' (no pending call has id {call_id!r})"
            )
        return [p for p in pending if p != call_id]
    if pending:
        raise RequestInvalid(
            f"messages[{i}]: tool_call_ids {', '.join(pending)} did not have response messages before this one"
        )
    if "tool_call_id" in message:
        raise RequestInvalid(f"messages[{i}].tool_call_id: only allowed on messages with role 'tool'")
    calls = message.get("tool_calls")
    if calls is None:
        return []
    if role != "assistant":
        raise RequestInvalid(f"messages[{i}].tool_calls: only allowed on assistant messages")
    check_type(calls, f"messages[{i}].tool_calls", list)
    ids = []
    for j, call in enumerate(calls):
        where = f"messages[{i}].tool_calls[{j}]"
        check_keys(call, where, {"id", "type", "function"}, {"id", "type", "function"})
        if call["type"] != "function":
            raise RequestInvalid(f"{where}.type: expected 'function'")
        check_keys(call["function"], f"{where}.function", {"name", "arguments"}, {"name", "arguments"})
        check_type(call["function"]["name"], f"{where}.function.name", str)
        check_type(call["function"]["arguments"], f"{where}.function.arguments", str)
        ids.append(check_type(call["id"], f"{where}.id", str))
    return ids


def _tools(body: dict) -> list[dict] | None:
    tools = body.get("tools")
    if tools is None:
        for name in ("tool_choice", "parallel_tool_calls"):
            if name in body:
                raise RequestInvalid(f"{name}: only allowed when 'tools' are specified")
        return None
    check_type(tools, "tools", list)
    if not tools or len(tools) > 128:
        raise RequestInvalid("tools: expected between 1 and 128 tools")
    names = []
    for k, tool in enumerate(tools):
        check_keys(tool, f"tools[{k}]", {"type", "function"}, {"type", "function"})
        if tool["type"] != "function":
            raise RequestInvalid(f"tools[{k}].type: expected 'function'")
        function = check_keys(
            tool["function"], f"tools[{k}].function", {"name", "description", "parameters", "strict"}, {"name"}
        )
        name = check_type(function["name"], f"tools[{k}].function.name", str)
        if not _TOOL_NAME.match(name):
            raise RequestInvalid(f"tools[{k}].function.name: {name!r} does not match '^[a-zA-Z0-9_-]{{1,64}}$'")
        if "parameters" in function:
            check_type(function["parameters"], f"tools[{k}].function.parameters", dict)
        names.append(name)
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        check_keys(choice, "tool_choice", {"type", "function"}, {"type", "function"})
        check_keys(choice["function"], "tool_choice.function", {"name"}, {"name"})
        if choice["type"] != "function" or choice["function"]["name"] not in names:
            raise RequestInvalid(f"tool_choice: no tool named {choice['function']['name']!r} in tools")
    elif choice is not None and choice not in ("none", "auto", "required"):
        raise RequestInvalid(f"tool_choice: {choice!r} is not one of none, auto, required or a named function")
    if "parallel_tool_calls" in body:
        check_type(body["parallel_tool_calls"], "parallel_tool_calls", bool)
    return tools


def tool_calls_for(body: dict, exchange: Exchange, completion_id: str) -> list[dict] | None:
    """The calls the fake model makes for ``body`` (see the module docstring), or None for a text answer."""
    tools = exchange.tools or []
    choice = body.get("tool_choice", "auto")
    last_role, last_text = exchange.turns[-1] if exchange.turns else ("user", "")
    if not tools or choice == "none":
        return None
    if isinstance(choice, dict):
        chosen = [t for t in tools if t["function"]["name"] == choice["function"]["name"]]
    elif choice == "required":
        chosen = tools if body.get("parallel_tool_calls", True) else tools[:1]
    else:  # auto: call the tools the user names, answer in text after tool results
        chosen = [t for t in tools if last_role == "user" and t["function"]["name"] in last_text]
    calls = []
    for n, tool in enumerate(chosen):
        arguments = sample_from_schema(tool["function"].get("parameters") or {"type": "object"})
        calls.append(
            {
                "id": f"call_{completion_id}_{n}",
                "type": "function",
                "function": {"name": tool["function"]["name"], "arguments": json.dumps(arguments)},
            }
        )
    return calls or None


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


def _token_logprobs(text: str, top: int) -> dict:
    tokens = [t for t in re.split(r"(?<= )", text) if t]

    def entry(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    content = []
    for i, token in enumerate(tokens):
        chosen = -0.25 * (1 + i % 4)
        alternatives = [entry(token, chosen)] + [entry(f"alt{k}", chosen - k) for k in range(1, top)]
        content.append({**entry(token, chosen), "top_logprobs": alternatives[:top]})
    return {"content": content, "refusal": None}


def chat_completion(body: dict, exchange: Exchange, responder: Responder, completion_id: str) -> dict:
    """The chat.completion object a server would return for ``body``."""
    calls = tool_calls_for(body, exchange, completion_id)
    if calls is not None:
        prompt_tokens = sum(len(t.split()) for _, t in exchange.turns)
        completion_tokens = sum(len(c["function"]["arguments"].split()) for c in calls)
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": None, "tool_calls": calls, "refusal": None},
                    "finish_reason": "tool_calls",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    stops = body.get("stop")
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    choices = []
    completion_tokens = 0
    for index in range(body.get("n") or 1):
        text, matched = apply_stops(responder(exchange), [stops] if isinstance(stops, str) else stops)
        text, truncated = truncate_words(text, limit)
        completion_tokens += len(text.split())
        choices.append(
            {
                "index": index,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "length" if truncated and matched is None else "stop",
                "logprobs": _token_logprobs(text, body.get("top_logprobs") or 0) if body.get("logprobs") else None,
            }
        )
    prompt_tokens = sum(len(t.split()) for _, t in exchange.turns) + len((exchange.system or "").split())
    completion = {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    if body.get("service_tier"):
        completion["service_tier"] = "default" if body["service_tier"] == "auto" else body["service_tier"]
    return completion
