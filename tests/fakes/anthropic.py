"""Fake of Anthropic's Messages API, used for request-shape checks and error paths.

Real generations go to ``vllm serve`` (which also speaks ``/v1/messages``); this fake covers
what a local server cannot: Anthropic's authentication, its exact error bodies and the
429 / 529 answers. Written from Anthropic's API reference:

* ``POST /v1/messages`` with headers ``x-api-key`` (recent SDKs send the key as ``Authorization:
  Bearer`` instead; both are accepted), ``anthropic-version`` and ``content-type: application/json``.
* Body: ``model``, ``messages``, ``max_tokens`` (all required), ``system`` (string or text
  blocks), ``stop_sequences``, ``temperature`` (0-1), ``top_p``, ``top_k``, ``metadata``,
  ``stream``, ``output_config`` (``format: {type: json_schema, schema}``), ``tools``,
  ``tool_choice``, ``thinking``, ``service_tier``... Unknown fields are rejected.
* Message roles are ``user`` and ``assistant`` only; content is a string or blocks of type
  ``text`` / ``image`` (source ``base64`` with media_type image/jpeg|png|gif|webp, or ``url``).
* Reply: ``{"id", "type": "message", "role": "assistant", "model", "content": [{"type":
  "text", "text"}], "stop_reason": "end_turn"|"max_tokens"|"stop_sequence", "stop_sequence",
  "usage": {"input_tokens", "output_tokens"}}``.
* Tools: ``tools`` items ``{"name" (^[a-zA-Z0-9_-]{1,64}$), "description"?, "input_schema" (an object
  schema, required), "cache_control"?, "strict"?, "type"?: "custom"}``; ``tool_choice`` ``{"type": "auto" |
  "any" | "tool" (+ "name") | "none", "disable_parallel_tool_use"?}``. Assistant turns may hold
  ``tool_use`` blocks (``id``, ``name``, ``input`` object) and ``thinking`` / ``redacted_thinking`` blocks;
  every ``tool_use`` must be answered by a ``tool_result`` block (``tool_use_id``, ``content``,
  ``is_error``?) in the very next user turn, results before any other block. The fake model calls tools
  when ``tool_choice`` is ``any`` (every tool, or the first with ``disable_parallel_tool_use``) or names
  one, and under ``auto`` when the last user text names a tool; the answer then has ``tool_use`` blocks
  (input sampled from the schema) and ``stop_reason: "tool_use"``.
* ``thinking: {"type": "enabled", "budget_tokens" (>= 1024, < max_tokens)}`` adds a ``thinking`` block
  with a ``signature`` first; with thinking on, forced tool use (``any`` / ``tool``) is refused, and the
  assistant turn whose tool results are being returned must start with its thinking block, signature
  unchanged. Usage reports ``cache_read_input_tokens`` / ``cache_creation_input_tokens`` (0 here unless
  ``cache_read`` is set).
* ``"stream": true`` answers with the event sequence message_start, content_block_start, ping,
  content_block_delta (``text_delta``, ``thinking_delta``, ``signature_delta``, ``input_json_delta``)...,
  content_block_stop, message_delta, message_stop.
* Errors: ``{"type": "error", "error": {"type", "message"}, "request_id"}`` with types
  invalid_request_error (400), authentication_error (401), permission_error (403),
  not_found_error (404), rate_limit_error (429), api_error (500), overloaded_error (529).
* Recent models reject ``temperature`` together with ``top_p``; set ``allow_temperature_and_top_p``
  to model an older one.
* Models named in ``no_sampling_models`` (exact names, default: a few that refuse sampling, such as
  ``claude-opus-4-7``) reject any of ``temperature``, ``top_p``, ``top_k`` with a 400.
* Prompt caching: a ``cache_control: {"type": "ephemeral"}`` (optional ``ttl`` ``5m``/``1h``) on a
  system block or a tool caches the prompt prefix up to it; at the top level of the body (automatic
  caching) it caches the whole prompt up to its last block, and a later request reads the longest prefix
  written before among its last 20 block boundaries (a conversation that goes on reads its earlier turns). The first request with that prefix reports
  its tokens as ``cache_creation_input_tokens``, later ones as ``cache_read_input_tokens``; ``input_tokens``
  counts only the rest. (The real API also needs a minimum prefix length, 1024+ tokens; the fake does not.)
  Every reply's usage carries both cache fields (0 when unused), as the API's does.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from typing import Any

from aiohttp import web

from ._server import (
    Exchange,
    FakeServer,
    Handler,
    RequestInvalid,
    Responder,
    apply_stops,
    check_keys,
    check_range,
    check_type,
    default_responder,
    sample_from_schema,
    truncate_words,
)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_BODY_FIELDS = {
    "model",
    "messages",
    "max_tokens",
    "system",
    "stop_sequences",
    "temperature",
    "top_p",
    "top_k",
    "metadata",
    "stream",
    "output_config",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
    "cache_control",
    "container",
    "inference_geo",
    "speed",
}
_MEDIA_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp"}
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def signature_of(thinking: str) -> str:
    """The signature this fake gives a thinking text (checked when the block comes back)."""
    return "sig_" + hashlib.sha256(thinking.encode()).hexdigest()[:32]


class FakeAnthropic(FakeServer):
    def __init__(
        self,
        api_key: str = "sk-ant-test",
        responder: Responder = default_responder,
        allow_temperature_and_top_p: bool = False,
        no_sampling_models: frozenset[str] = frozenset(
            {
                "claude-opus-4-7",
                "claude-opus-4-7-20260101",
                "claude-sonnet-5",
                "claude-fable-1",
                "claude-mythos-preview",
                "claude-opus-4-8",
                "claude-opus-5",
            }
        ),
        cache_read: int = 0,
        report_usage: bool = True,
    ):
        super().__init__()
        # False: answer without ``usage``, as some servers speaking the protocol do (absent, not zero)
        self.report_usage = report_usage
        self.cache_read = cache_read
        self.api_key = api_key
        self.responder = responder
        self.allow_temperature_and_top_p = allow_temperature_and_top_p
        self.no_sampling_models = no_sampling_models
        self.prompt_cache: set[str] = set()

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [("POST", "/v1/messages", self._messages)]

    def error_body(self, status: int, message: str) -> Any:
        return {
            "type": "error",
            "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message},
            "request_id": f"req_fake{len(self.requests)}",
        }

    def _error(self, status: int, message: str) -> web.Response:
        return web.json_response(self.error_body(status, message), status=status)

    async def _messages(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        key = request.headers.get("x-api-key") or (auth[len("Bearer ") :] if auth.startswith("Bearer ") else "")
        if not key:
            return self._error(401, "x-api-key header is required")
        if key != self.api_key:
            return self._error(401, "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return self._error(400, "anthropic-version: header is required")
        if request.content_type != "application/json":
            return self._error(400, "content-type must be application/json")
        try:
            body = json.loads(await request.read())
            exchange = self._validate(body)
        except ValueError as exc:
            return self._error(400, f"There was an issue with your request body: {exc}")
        except RequestInvalid as exc:
            return self._error(exc.status, str(exc))
        blocks: list[dict] = []
        if exchange.thinking:
            thought = f"The user wrote {len(exchange.turns)} turns."
            blocks.append({"type": "thinking", "thinking": thought, "signature": signature_of(thought)})
        calls = self._tool_uses(body, exchange)
        matched = None
        if calls:
            blocks += calls
            stop_reason = "tool_use"
        else:
            text = self.responder(exchange)
            text, matched = apply_stops(text, body.get("stop_sequences"))
            text, truncated = truncate_words(text, body["max_tokens"])
            stop_reason = "stop_sequence" if matched else ("max_tokens" if truncated else "end_turn")
            blocks.append({"type": "text", "text": text})
        input_tokens = sum(len(t.split()) for _, t in exchange.turns) + len((exchange.system or "").split())
        try:
            usage = self._cache_usage(body, exchange, input_tokens)
        except RequestInvalid as exc:
            return self._error(exc.status, str(exc))
        usage["output_tokens"] = sum(len(json.dumps(b).split()) for b in blocks if b["type"] != "text") + sum(
            len(b["text"].split()) for b in blocks if b["type"] == "text"
        )
        if "service_tier" in body:  # the tier that answered (the API reports it on every reply)
            usage["service_tier"] = "standard"
        if body.get("stream"):
            return await self._stream(request, body, blocks, stop_reason, matched, usage)
        message = {
            "id": f"msg_fake{len(self.requests)}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": blocks,
            "stop_reason": stop_reason,
            "stop_sequence": matched,
            "usage": usage,
        }
        if not self.report_usage:
            del message["usage"]
        return web.json_response(message)

    def _cache_usage(self, body: dict, exchange: Exchange, input_tokens: int) -> dict[str, int]:
        """Input usage, with the cached prefix split out: explicit breakpoints (system blocks, tools marked
        with cache_control) cache the tools + system prefix; automatic caching (a top-level cache_control)
        puts the breakpoint on the last block and looks back over the 20 earlier block boundaries for a
        prefix written before. Reads are the longest cached prefix; writes run from there to the last
        breakpoint; ``input_tokens`` counts what follows the last breakpoint."""
        marked = []
        system = body.get("system")
        if isinstance(system, list):
            marked += [b for b in system if isinstance(b, dict) and "cache_control" in b]
        marked += [t for t in body.get("tools") or [] if isinstance(t, dict) and "cache_control" in t]
        automatic = body.get("cache_control")
        for control in [b["cache_control"] for b in marked] + ([automatic] if automatic is not None else []):
            control = check_keys(control, "cache_control", {"type", "ttl"}, {"type"})
            if control["type"] != "ephemeral":
                raise RequestInvalid("cache_control.type: Input should be 'ephemeral'")
            if control.get("ttl", "5m") not in ("5m", "1h"):
                raise RequestInvalid("cache_control.ttl: Input should be '5m' or '1h'")
        usage = {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": self.cache_read,
        }
        if not marked and automatic is None:
            return usage
        tools = body.get("tools")
        head_tokens = len((exchange.system or "").split()) + (len(json.dumps(tools).split()) if tools else 0)
        head = json.dumps([tools or [], exchange.system or ""], sort_keys=True)
        points = [(head, head_tokens)] if marked else []  # (prefix, its tokens) at each breakpoint
        lookback: list[tuple[str, int]] = []
        if automatic is not None:
            tokens = head_tokens
            for k, (_, text) in enumerate(exchange.turns, 1):
                tokens += len(text.split())
                lookback.append((head + json.dumps(exchange.turns[:k]), tokens))
            lookback = lookback[-21:]
            points.append(lookback[-1])
        read = max((t for key, t in points + lookback if key in self.prompt_cache), default=0)
        last = max(t for _, t in points)
        usage["input_tokens"] = max(0, input_tokens + head_tokens - len((exchange.system or "").split()) - last)
        if read:
            usage["cache_read_input_tokens"] = read
        usage["cache_creation_input_tokens"] = max(0, last - read)
        self.prompt_cache.update(key for key, _ in points)
        return usage

    def _tool_uses(self, body: dict, exchange: Exchange) -> list[dict]:
        tools = exchange.tools or []
        choice = body.get("tool_choice") or {"type": "auto"}
        last_role, last_text = exchange.turns[-1] if exchange.turns else ("user", "")
        if choice["type"] == "tool":
            chosen = [t for t in tools if t["name"] == choice["name"]]
        elif choice["type"] == "any":
            chosen = tools[:1] if choice.get("disable_parallel_tool_use") else tools
        elif choice["type"] == "auto" and last_role == "user" and not exchange.tool_results:
            chosen = [t for t in tools if t["name"] in last_text]
            chosen = chosen[:1] if choice.get("disable_parallel_tool_use") else chosen
        else:
            chosen = []
        return [
            {"type": "tool_use", "id": f"toolu_fake{len(self.requests)}_{n}", "name": t["name"],
             "input": sample_from_schema(t["input_schema"])}
            for n, t in enumerate(chosen)
        ]  # fmt: skip

    async def _stream(
        self, request: web.Request, body: dict, blocks: list[dict], stop_reason: str, matched: str | None, usage: dict
    ) -> web.StreamResponse:
        """The Messages streaming event sequence for an answer made of ``blocks``."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        message = {
            "id": f"msg_fake{len(self.requests)}", "type": "message", "role": "assistant", "model": body["model"],
            "content": [], "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 1},
        }  # fmt: skip
        if not self.report_usage:
            del message["usage"]
        events: list[tuple[str, dict]] = [("message_start", {"type": "message_start", "message": message})]
        for index, block in enumerate(blocks):
            kind = block["type"]
            start = {"text": {"type": "text", "text": ""}, "thinking": {"type": "thinking", "thinking": ""},
                     "tool_use": {**block, "input": {}}}[kind]  # fmt: skip
            events.append(
                ("content_block_start", {"type": "content_block_start", "index": index, "content_block": start})
            )
            if index == 0:
                events.append(("ping", {"type": "ping"}))
            if kind == "text":
                deltas = [{"type": "text_delta", "text": p} for p in re.split(r"(?<= )", block["text"]) if p]
            elif kind == "thinking":
                deltas = [{"type": "thinking_delta", "thinking": block["thinking"]},
                          {"type": "signature_delta", "signature": block["signature"]}]  # fmt: skip
            else:
                raw = json.dumps(block["input"])
                deltas = [{"type": "input_json_delta", "partial_json": raw[i : i + 7]} for i in range(0, len(raw), 7)]
            for delta in deltas:
                events.append(("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))
            events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        events += [
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": matched},
                               **({"usage": {"output_tokens": usage["output_tokens"]}} if self.report_usage else {})}),
            ("message_stop", {"type": "message_stop"}),
        ]  # fmt: skip
        for name, data in events:
            await response.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        await response.write_eof()
        return response

    def _validate(self, body: Any) -> Exchange:
        check_keys(body, "body", _BODY_FIELDS, {"model", "messages", "max_tokens"})
        check_type(body["model"], "model", str)
        if body.get("service_tier") not in (None, "auto", "standard_only"):
            raise RequestInvalid("service_tier: Input should be 'auto' or 'standard_only'")
        if check_type(body["max_tokens"], "max_tokens", int) < 1:
            raise RequestInvalid("max_tokens: must be greater than or equal to 1")
        if "temperature" in body:
            check_range(body["temperature"], "temperature", 0.0, 1.0)
        if "top_p" in body:
            check_range(body["top_p"], "top_p", 0.0, 1.0)
        if "top_k" in body:
            check_type(body["top_k"], "top_k", int)
        refused = sorted({"temperature", "top_p", "top_k"} & set(body))
        if refused and body["model"] in self.no_sampling_models:
            raise RequestInvalid(f"`{refused[0]}` is not supported for this model.")
        if "temperature" in body and "top_p" in body and not self.allow_temperature_and_top_p:
            raise RequestInvalid(
                "`temperature` and `top_p` cannot both be specified for this model. Please use only one."
            )
        if "stop_sequences" in body:
            for i, stop in enumerate(check_type(body["stop_sequences"], "stop_sequences", list)):
                check_type(stop, f"stop_sequences.{i}", str)
        system = self._system(body.get("system"))
        tools = self._tools(body)
        thinking = self._thinking(body)
        turns, images = self._turns(check_type(body["messages"], "messages", list), thinking)
        schema = None
        if "output_config" in body:
            config = check_keys(body["output_config"], "output_config", {"format", "effort"})
            if config.get("format") is not None:
                fmt = check_keys(config["format"], "output_config.format", {"type", "schema"}, {"type", "schema"})
                if fmt["type"] != "json_schema":
                    raise RequestInvalid("output_config.format.type: Input should be 'json_schema'")
                schema = check_type(fmt["schema"], "output_config.format.schema", dict)
        exchange = Exchange(system=system, turns=turns, images=images, schema=schema, tools=tools)
        exchange.thinking = thinking  # type: ignore[attr-defined]
        exchange.tool_results = self._last_results  # type: ignore[attr-defined]
        return exchange

    def _tools(self, body: dict) -> list[dict] | None:
        if "tools" not in body:
            if "tool_choice" in body and body["tool_choice"].get("type") != "none":
                raise RequestInvalid("tool_choice: may only be specified while providing tools")
            return None
        names = []
        for k, tool in enumerate(check_type(body["tools"], "tools", list)):
            where = f"tools.{k}"
            allowed = {"name", "description", "input_schema", "cache_control", "strict", "type"}
            check_keys(tool, where, allowed, {"name", "input_schema"})
            if not _TOOL_NAME.match(check_type(tool["name"], f"{where}.name", str)):
                raise RequestInvalid(f"{where}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
            if tool.get("type", "custom") != "custom":
                raise RequestInvalid(f"{where}.type: Input should be 'custom'")
            schema = check_type(tool["input_schema"], f"{where}.input_schema", dict)
            if schema.get("type") != "object":
                raise RequestInvalid(f"{where}.input_schema.type: Field required; Input should be 'object'")
            if tool["name"] in names:
                raise RequestInvalid("tools: Tool names must be unique.")
            names.append(tool["name"])
        choice = body.get("tool_choice")
        if choice is not None:
            kind = check_type(choice, "tool_choice", dict).get("type")
            if kind == "tool":
                check_keys(choice, "tool_choice", {"type", "name", "disable_parallel_tool_use"}, {"type", "name"})
                if choice["name"] not in names:
                    raise RequestInvalid(f"tool_choice.name: Tool '{choice['name']}' not found in tools")
            elif kind in ("auto", "any"):
                check_keys(choice, "tool_choice", {"type", "disable_parallel_tool_use"})
            elif kind == "none":
                check_keys(choice, "tool_choice", {"type"})
            else:
                raise RequestInvalid("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
            if "disable_parallel_tool_use" in choice:
                check_type(choice["disable_parallel_tool_use"], "tool_choice.disable_parallel_tool_use", bool)
        return body["tools"]  # type: ignore[no-any-return]

    def _thinking(self, body: dict) -> bool:
        if "thinking" not in body:
            return False
        thinking = check_type(body["thinking"], "thinking", dict)
        if thinking.get("type") == "disabled":
            check_keys(thinking, "thinking", {"type"})
            return False
        check_keys(thinking, "thinking", {"type", "budget_tokens"}, {"type", "budget_tokens"})
        if thinking["type"] != "enabled":
            raise RequestInvalid("thinking.type: Input should be 'enabled' or 'disabled'")
        budget = check_type(thinking["budget_tokens"], "thinking.budget_tokens", int)
        if budget < 1024 or budget >= body["max_tokens"]:
            raise RequestInvalid("thinking.budget_tokens: must be >= 1024 and less than max_tokens")
        if "temperature" in body and body["temperature"] != 1:
            raise RequestInvalid("`temperature` may only be set to 1 when thinking is enabled.")
        if (body.get("tool_choice") or {}).get("type") in ("any", "tool"):
            raise RequestInvalid("Thinking may not be enabled when tool_choice forces tool use.")
        return True

    def _system(self, system: Any) -> str | None:
        if system is None or isinstance(system, str):
            return system
        blocks = check_type(system, "system", list)
        texts = []
        for i, block in enumerate(blocks):
            check_keys(block, f"system.{i}", {"type", "text", "cache_control", "citations"}, {"type", "text"})
            if block["type"] != "text":
                raise RequestInvalid(f"system.{i}.type: Input should be 'text'")
            texts.append(check_type(block["text"], f"system.{i}.text", str))
        return "\n".join(texts)

    def _turns(self, messages: list, thinking: bool) -> tuple[list[tuple[str, str]], int]:
        if not messages:
            raise RequestInvalid("messages: at least one message is required")
        turns: list[tuple[str, str]] = []
        images = 0
        pending: list[str] = []  # tool_use ids the next user turn must answer
        self._last_results = False
        for i, message in enumerate(messages):
            check_keys(message, f"messages.{i}", {"role", "content"}, {"role", "content"})
            role = message["role"]
            if role == "system":
                raise RequestInvalid(
                    'messages: Unexpected role "system". The Messages API accepts a top-level '
                    '`system` parameter, not "system" as an input message role.'
                )
            if role not in ("user", "assistant"):
                raise RequestInvalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
            content = message["content"]
            blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
            texts = []
            answered: list[str] = []
            for j, block in enumerate(check_type(blocks, f"messages.{i}.content", list)):
                where = f"messages.{i}.content.{j}"
                kind = block.get("type") if isinstance(block, dict) else None
                if kind == "text":
                    check_keys(block, where, {"type", "text", "cache_control", "citations"}, {"type", "text"})
                    texts.append(check_type(block["text"], f"{where}.text", str))
                elif kind == "image":
                    check_keys(block, where, {"type", "source", "cache_control"}, {"type", "source"})
                    self._image_source(block["source"], f"{where}.source")
                    if role != "user":
                        raise RequestInvalid(f"{where}: image blocks are only allowed in user turns")
                    images += 1
                elif kind == "tool_use" and role == "assistant":
                    check_keys(
                        block, where, {"type", "id", "name", "input", "cache_control"}, {"type", "id", "name", "input"}
                    )
                    check_type(block["input"], f"{where}.input", dict)
                    answered.append(check_type(block["id"], f"{where}.id", str))
                elif kind == "tool_result" and role == "user":
                    allowed = {"type", "tool_use_id", "content", "is_error", "cache_control"}
                    check_keys(block, where, allowed, {"type", "tool_use_id"})
                    if block["tool_use_id"] not in pending or any(b.get("type") != "tool_result" for b in blocks[:j]):
                        raise RequestInvalid(
                            f"{where}: unexpected `tool_use_id` found in `tool_result` blocks: {block['tool_use_id']}. "
                            "Each `tool_result` block must have a corresponding `tool_use` block in the previous "
                            "message, and tool_result blocks must come first."
                        )
                    pending.remove(block["tool_use_id"])
                    result = block.get("content", "")
                    texts.append(result if isinstance(result, str) else json.dumps(result))
                elif kind in ("thinking", "redacted_thinking") and role == "assistant":
                    self._check_thinking(block, where)
                else:
                    raise RequestInvalid(f"{where}.type: unsupported content block type {kind!r} in a {role} turn")
            if pending:
                raise RequestInvalid(
                    f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                    + ", ".join(pending)
                )
            if (
                answered
                and thinking
                and i == len(messages) - 2
                and blocks[0].get("type") not in ("thinking", "redacted_thinking")
            ):
                raise RequestInvalid(
                    f"messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                    f"{blocks[0].get('type')!r}. When `thinking` is enabled, a final `assistant` message must start "
                    "with a thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks)."
                )
            self._last_results = role == "user" and any(b.get("type") == "tool_result" for b in blocks)
            pending = answered
            turns.append((role, "".join(texts)))
        if pending:
            raise RequestInvalid("messages: the last assistant turn's `tool_use` blocks have no `tool_result`")
        return turns, images

    def _check_thinking(self, block: dict, where: str) -> None:
        if block["type"] == "redacted_thinking":
            check_keys(block, where, {"type", "data"}, {"type", "data"})
            return
        check_keys(block, where, {"type", "thinking", "signature"}, {"type", "thinking", "signature"})
        if block["signature"] != signature_of(check_type(block["thinking"], f"{where}.thinking", str)):
            raise RequestInvalid(f"{where}.signature: Invalid `signature` in `thinking` block")

    def _image_source(self, source: Any, where: str) -> None:
        kind = source.get("type") if isinstance(source, dict) else None
        if kind == "base64":
            check_keys(source, where, {"type", "media_type", "data"}, {"type", "media_type", "data"})
            if source["media_type"] not in _MEDIA_TYPES:
                raise RequestInvalid(f"{where}.media_type: Input should be one of {sorted(_MEDIA_TYPES)}")
            try:
                base64.b64decode(source["data"], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise RequestInvalid(f"{where}.data: invalid base64 data") from exc
        elif kind == "url":
            check_keys(source, where, {"type", "url"}, {"type", "url"})
            if not str(source["url"]).startswith(("http://", "https://")):
                raise RequestInvalid(f"{where}.url: must be an http(s) URL")
        else:
            raise RequestInvalid(f"{where}.type: Input should be 'base64', 'url' or 'file'")
