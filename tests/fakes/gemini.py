"""Fake of the Gemini API (generativelanguage.googleapis.com, v1beta).

Written from Google's REST reference for ``models.generateContent`` and
``models.streamGenerateContent``:

* ``POST /v1beta/models/{model}:generateContent`` and ``...:streamGenerateContent?alt=sse``
* API key in the ``x-goog-api-key`` header or the ``key`` query parameter; a missing key is
  403 PERMISSION_DENIED, a wrong one is **400** INVALID_ARGUMENT with reason
  ``API_KEY_INVALID`` (Google does not answer 401 for API keys).
* Body: ``contents`` (required; roles ``user``/``model``; parts hold exactly one of ``text``,
  ``inlineData``, ``fileData``...), ``systemInstruction``, ``generationConfig``,
  ``safetySettings``, ``tools``, ``toolConfig``, ``cachedContent``. Unknown fields are
  rejected ("Invalid JSON payload received. Unknown name ...").
* ``generationConfig.responseSchema`` is an OpenAPI-subset Schema: no ``$ref``/``$defs``,
  no ``additionalProperties``; it needs ``responseMimeType: application/json``.
* ``generationConfig.candidateCount`` (1-8) answers with that many ``candidates`` (``index`` 0..n-1);
  ``responseLogprobs: true`` adds ``avgLogprobs`` and ``logprobsResult`` to each candidate:
  ``chosenCandidates`` (one ``{token, tokenId, logProbability}`` per decoding step) and, with
  ``logprobs`` (0-20, only valid with ``responseLogprobs``), ``topCandidates`` (per step,
  ``{"candidates": [...]}`` sorted by log-probability, highest first).
* Function calling: ``tools: [{"functionDeclarations": [{"name" (letter or _ first, then letters,
  digits, ``_ . : -``, at most 64), "description"?, "parameters"? (a Schema), ...}]}]``; ``toolConfig:
  {"functionCallingConfig": {"mode": AUTO|ANY|NONE|VALIDATED, "allowedFunctionNames"? (ANY and
  VALIDATED only)}}``. A ``model`` turn's ``functionCall`` parts (``name``, ``args``, ``id``?) come right
  after a user turn or a function-response turn, and the next turn has exactly as many
  ``functionResponse`` parts (``name``, ``response`` object, ``id``?). The fake model calls functions
  under ANY (every allowed one) and under AUTO when the last user text names one and the last turn is
  not function responses; it answers with ``functionCall`` parts (args sampled from the schema) and
  ``finishReason: STOP``, as Gemini does.
* ``generationConfig.thinkingConfig.includeThoughts`` adds a ``thought: true`` text part first and a
  ``thoughtSignature`` on the first call part; with thinking on, the latest function-call turn sent back
  must carry that signature unchanged ("missing a thought_signature"). Thinking (``includeThoughts``
  or a ``thinkingBudget`` above 0, or -1) spends ``THOUGHTS_TOKENS`` per candidate, reported in
  ``usageMetadata.thoughtsTokenCount`` and left out of ``candidatesTokenCount`` (zero counts are omitted).
* Errors: ``{"error": {"code", "message", "status", "details"}}``.
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
    check_range,
    check_type,
    default_responder,
    sample_from_schema,
    truncate_words,
)

_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

_REQUEST_FIELDS = {
    "contents",
    "tools",
    "toolConfig",
    "safetySettings",
    "systemInstruction",
    "generationConfig",
    "cachedContent",
}
_CONTENT_FIELDS = {"role", "parts"}
_PART_DATA = {
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
}
_PART_FIELDS = _PART_DATA | {"thought", "thoughtSignature", "videoMetadata"}
_GEN_CONFIG_FIELDS = {
    "stopSequences",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "responseModalities",
    "candidateCount",
    "maxOutputTokens",
    "temperature",
    "topP",
    "topK",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
    "responseLogprobs",
    "logprobs",
    "enableEnhancedCivicAnswers",
    "speechConfig",
    "thinkingConfig",
    "mediaResolution",
}
_SCHEMA_FIELDS = {
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "default",
    "items",
    "minimum",
    "maximum",
}
_SCHEMA_TYPES = {"TYPE_UNSPECIFIED", "STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL"}
_FUNCTION_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_.:-]{0,63}$")
_DECLARATION_FIELDS = {"name", "description", "parameters", "parametersJsonSchema", "response",
                       "responseJsonSchema", "behavior"}  # fmt: skip
_TOOL_FIELDS = {"functionDeclarations", "googleSearchRetrieval", "codeExecution", "googleSearch", "urlContext"}
_MODES = {"MODE_UNSPECIFIED", "AUTO", "ANY", "NONE", "VALIDATED"}


def signature_of(name: str, args: Any) -> str:
    """The thought signature this fake gives a call (checked when the call comes back)."""
    return base64.b64encode(hashlib.sha256(json.dumps([name, args], sort_keys=True).encode()).digest()).decode()


_MIME_IMAGE = re.compile(r"^image/(png|jpeg|webp|heic|heif|gif)$")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


def _normalize(obj: Any, where: str, allowed: set[str], required: frozenset[str] = frozenset()) -> dict:
    """Proto3 JSON accepts both lowerCamel and snake_case names: map to camel, then check."""
    if not isinstance(obj, dict):
        raise RequestInvalid(f"Invalid value at '{where}', expected an object")
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = _camel(key)
        if name not in allowed:
            raise RequestInvalid(
                f"Invalid JSON payload received. Unknown name \"{key}\" at '{where}': Cannot find field."
            )
        out[name] = value
    for name in sorted(required - set(out)):
        raise RequestInvalid(f"* GenerateContentRequest.{where}.{name}: required field is not set")
    return out


#: Thinking tokens the fake model spends per candidate when thinking is on.
THOUGHTS_TOKENS = 12


def _thoughts_tokens(config: dict[str, Any]) -> int:
    """Thinking tokens of one candidate: a thinking budget above 0 (or -1, dynamic) or ``includeThoughts``
    turns thinking on; Google bills them at the output rate, reports them as ``thoughtsTokenCount`` and
    leaves them out of ``candidatesTokenCount``."""
    thinking = config.get("thinkingConfig") or {}
    budget = thinking.get("thinkingBudget", 0)
    return THOUGHTS_TOKENS if thinking.get("includeThoughts") or budget == -1 or budget > 0 else 0


class FakeGemini(FakeServer):
    """Fake Gemini endpoint. ``responder`` decides the reply text from an :class:`Exchange`."""

    def __init__(self, api_key: str = "gemini-test-key", responder: Responder = default_responder):
        super().__init__()
        self.api_key = api_key
        self.responder = responder
        self._calls_pending: list[str] = []
        self._last_call_turn: list[dict] = []
        self._last_was_responses = False
        self._calling: dict = {}

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [("POST", "/v1beta/models/{model_action}", self._handle)]

    def error_body(self, status: int, message: str) -> Any:
        return {"error": {"code": status, "message": message, "status": _STATUS.get(status, "UNKNOWN")}}

    def _error(self, status: int, message: str, reason: str | None = None) -> web.Response:
        body = self.error_body(status, message)
        if reason:
            body["error"]["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": reason,
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }
            ]
        return web.json_response(body, status=status)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        model, _, action = request.match_info["model_action"].partition(":")
        if action not in ("generateContent", "streamGenerateContent"):
            return self._error(404, f"Method {action or '(none)'} not found.")
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            return self._error(
                403,
                "Method doesn't allow unregistered callers (callers without established identity)."
                " Please use API Key or other form of API consumer identity to call this API.",
            )
        if key != self.api_key:
            return self._error(400, "API key not valid. Please pass a valid API key.", "API_KEY_INVALID")
        if not model.startswith("gemini"):
            return self._error(
                404, f"models/{model} is not found for API version v1beta, or is not supported for {action}."
            )
        if request.content_type != "application/json":
            return self._error(400, "Invalid JSON payload: Content-Type must be application/json.")
        try:
            body = json.loads(await request.read())
            reply = self.answer(model, body)
        except ValueError as exc:
            return self._error(400, f"Invalid JSON payload received. {exc}")
        except RequestInvalid as exc:
            return self._error(exc.status, str(exc))
        if action == "generateContent":
            return web.json_response(reply)
        return await self._stream(request, reply)

    def answer(self, model: str, body: Any) -> dict[str, Any]:
        """The GenerateContentResponse to ``body`` (raises ``RequestInvalid`` or ``ValueError`` for a bad one)."""
        exchange, config = self._validate(body)
        candidates = []
        output_tokens = thoughts_tokens = 0
        for index in range(config.get("candidateCount", 1)):
            parts = self._calls(exchange, body, config)
            finish = "STOP"
            if not any("functionCall" in p for p in parts):
                text, finish = self._generate(exchange, config)
                parts.append({"text": text})
            answer = [p for p in parts if not p.get("thought")]  # thoughts are counted apart
            output_tokens += sum(len(p["text"].split()) if "text" in p else len(json.dumps(p).split()) for p in answer)
            thoughts_tokens += _thoughts_tokens(config)
            candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "finishReason": finish}
            candidate["index"] = index
            if config.get("responseLogprobs"):
                candidate.update(_logprobs(" ".join(p.get("text", "") for p in parts), config.get("logprobs", 0)))
            candidates.append(candidate)
        prompt_tokens = sum(len(t.split()) for _, t in exchange.turns) + len((exchange.system or "").split())
        usage = {"promptTokenCount": prompt_tokens, "candidatesTokenCount": output_tokens}
        if thoughts_tokens:  # Google leaves zero counts out
            usage["thoughtsTokenCount"] = thoughts_tokens
        usage["totalTokenCount"] = prompt_tokens + output_tokens + thoughts_tokens
        return {
            "candidates": candidates,
            "usageMetadata": usage,
            "modelVersion": model,
            "responseId": f"resp-{len(self.requests)}",
        }

    async def _stream(self, request: web.Request, reply: dict) -> web.StreamResponse:
        if request.query.get("alt") != "sse":
            return web.json_response([reply])
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunks: list[list[dict]] = []
        for part in reply["candidates"][0]["content"]["parts"]:
            if "text" in part and not part.get("thought"):
                chunks += [[{"text": p}] for p in re.split(r"(?<= )", part["text"]) if p] or [[{"text": ""}]]
            else:
                chunks.append([part])
        for i, parts in enumerate(chunks):
            chunk: dict[str, Any] = {"candidates": [{"content": {"parts": parts, "role": "model"}, "index": 0}]}
            if i == len(chunks) - 1:
                chunk["candidates"][0]["finishReason"] = reply["candidates"][0]["finishReason"]
                chunk["usageMetadata"] = reply["usageMetadata"]
            await response.write(f"data: {json.dumps(chunk)}\r\n\r\n".encode())
        await response.write_eof()
        return response

    # ------------------------------------------------------------------ validation
    def _validate(self, raw: Any) -> tuple[Exchange, dict]:
        body = _normalize(raw, "GenerateContentRequest", _REQUEST_FIELDS, {"contents"})
        contents = check_type(body["contents"], "contents", list)
        if not contents:
            raise RequestInvalid("* GenerateContentRequest.contents: contents is not specified")
        turns: list[tuple[str, str]] = []
        images = 0
        self._calls_pending: list[str] = []
        self._last_call_turn: list[dict] = []
        self._last_was_responses = False
        for i, item in enumerate(contents):
            content = _normalize(item, f"contents[{i}]", _CONTENT_FIELDS, {"parts"})
            role = content.get("role", "user")
            if role not in ("user", "model"):
                raise RequestInvalid("Please use a valid role: user, model.")
            text, n_images = self._parts(content["parts"], f"contents[{i}].parts", role)
            images += n_images
            turns.append((role, text))
        if self._calls_pending:
            raise RequestInvalid(
                "Please ensure that the number of function response parts is equal to the number of function "
                "call parts of the function call turn."
            )
        responses_last = self._last_was_responses
        tools = self._tools(body)
        system = None
        if "systemInstruction" in body:
            sys_content = _normalize(body["systemInstruction"], "system_instruction", _CONTENT_FIELDS, {"parts"})
            system, n_images = self._parts(sys_content["parts"], "system_instruction.parts")
            if n_images:
                raise RequestInvalid("system_instruction: only text parts are supported")
        config = _normalize(body.get("generationConfig", {}), "generation_config", _GEN_CONFIG_FIELDS)
        schema = self._check_config(config)
        if (config.get("thinkingConfig") or {}).get("includeThoughts") and self._last_call_turn:
            first = self._last_call_turn[0]
            if "thoughtSignature" not in first:
                raise RequestInvalid(
                    f"Function call is missing a thought_signature in functionCall parts: {first['functionCall']['name']}"
                )
        exchange = Exchange(system=system, turns=turns, images=images, schema=schema, tools=tools)
        exchange.responses_last = responses_last  # type: ignore[attr-defined]
        return exchange, config

    def _tools(self, body: dict) -> list[dict] | None:
        declarations: list[dict] = []
        for k, raw in enumerate(check_type(body.get("tools", []), "tools", list)):
            tool = _normalize(raw, f"tools[{k}]", _TOOL_FIELDS)
            for n, decl in enumerate(check_type(tool.get("functionDeclarations", []), "function_declarations", list)):
                where = f"tools[{k}].function_declarations[{n}]"
                decl = _normalize(decl, where, _DECLARATION_FIELDS, frozenset({"name"}))
                if not _FUNCTION_NAME.match(check_type(decl["name"], f"{where}.name", str)):
                    raise RequestInvalid(f"* GenerateContentRequest.{where}.name: Invalid function name.")
                if "parameters" in decl:
                    _check_schema(decl["parameters"], f"{where}.parameters")
                    if decl["parameters"].get("type") == "OBJECT" and not decl["parameters"].get("properties"):
                        raise RequestInvalid(
                            f"* GenerateContentRequest.{where}.parameters.properties: should be non-empty for OBJECT type"
                        )
                declarations.append(decl)
        names = [d["name"] for d in declarations]
        config = _normalize(body.get("toolConfig", {}), "tool_config", {"functionCallingConfig", "retrievalConfig"})
        calling = _normalize(config.get("functionCallingConfig", {}), "tool_config.function_calling_config",
                             {"mode", "allowedFunctionNames"})  # fmt: skip
        if calling.get("mode", "AUTO") not in _MODES:
            raise RequestInvalid(f"Invalid value at 'tool_config.function_calling_config.mode', \"{calling['mode']}\"")
        allowed = calling.get("allowedFunctionNames")
        if allowed is not None:
            if calling.get("mode") not in ("ANY", "VALIDATED"):
                raise RequestInvalid("* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names: "
                                     "only allowed when mode is ANY or VALIDATED")  # fmt: skip
            for name in allowed:
                if name not in names:
                    raise RequestInvalid(f"allowed_function_names: function {name!r} is not declared in tools")
        self._calling = calling
        return declarations or None

    def _calls(self, exchange: Exchange, body: dict, config: dict) -> list[dict]:
        declarations = exchange.tools or []
        mode = self._calling.get("mode", "AUTO")
        last_role, last_text = exchange.turns[-1]
        if mode == "ANY":
            allowed = self._calling.get("allowedFunctionNames")
            chosen = [d for d in declarations if allowed is None or d["name"] in allowed]
        elif mode in ("AUTO", "VALIDATED") and last_role == "user" and not exchange.responses_last:  # type: ignore[attr-defined]
            chosen = [d for d in declarations if d["name"] in last_text]
        else:
            chosen = []
        parts: list[dict] = []
        thinking = bool((config.get("thinkingConfig") or {}).get("includeThoughts"))
        if thinking:
            parts.append({"text": f"Thinking about {len(exchange.turns)} turns.", "thought": True})
        for n, decl in enumerate(chosen):
            args = sample_from_schema(decl["parameters"]) if "parameters" in decl else {}
            part: dict[str, Any] = {"functionCall": {"name": decl["name"], "args": args}}
            if thinking and n == 0:
                part["thoughtSignature"] = signature_of(decl["name"], args)
            parts.append(part)
        return parts

    def _parts(self, parts: Any, where: str, role: str = "user") -> tuple[str, int]:
        check_type(parts, where, list)
        if not parts:
            raise RequestInvalid(f"* GenerateContentRequest.{where}: must not be empty")
        texts: list[str] = []
        images = 0
        calls = [p for p in parts if isinstance(p, dict) and "functionCall" in p]
        responses = [p for p in parts if isinstance(p, dict) and "functionResponse" in p]
        if self._calls_pending and len(responses) != len(self._calls_pending):
            raise RequestInvalid(
                "Please ensure that the number of function response parts is equal to the number of function "
                "call parts of the function call turn."
            )
        if responses and not self._calls_pending:
            raise RequestInvalid(
                "Please ensure that function response turn comes immediately after a function call turn."
            )
        if calls and (role != "model"):
            raise RequestInvalid(f"{where}: function_call parts belong to model turns")
        for j, raw in enumerate(parts):
            part = _normalize(raw, f"{where}[{j}]", _PART_FIELDS)
            data = [k for k in part if k in _PART_DATA]
            if len(data) != 1:
                raise RequestInvalid(f"{where}[{j}]: exactly one data field is required, got {data}")
            if "text" in part:
                texts.append(check_type(part["text"], f"{where}[{j}].text", str))
            elif "functionCall" in part:
                call = _normalize(part["functionCall"], f"{where}[{j}].function_call", {"id", "name", "args"},
                                  frozenset({"name"}))  # fmt: skip
                check_type(call.get("args", {}), f"{where}[{j}].function_call.args", dict)
                if "thoughtSignature" in part and part["thoughtSignature"] != signature_of(
                    call["name"], call.get("args", {})
                ):
                    raise RequestInvalid(f"{where}[{j}].thought_signature: Invalid thought signature.")
            elif "functionResponse" in part:
                resp = _normalize(part["functionResponse"], f"{where}[{j}].function_response",
                                  {"id", "name", "response", "parts", "willContinue", "scheduling"},
                                  frozenset({"name", "response"}))  # fmt: skip
                check_type(resp["response"], f"{where}[{j}].function_response.response", dict)
                if resp["name"] not in self._calls_pending:
                    raise RequestInvalid(f"{where}[{j}].function_response.name: no pending call of {resp['name']!r}")
                self._calls_pending.remove(resp["name"])
                texts.append(json.dumps(resp["response"]))
            elif "inlineData" in part:
                blob = _normalize(
                    part["inlineData"], f"{where}[{j}].inline_data", {"mimeType", "data"}, {"mimeType", "data"}
                )
                if not _MIME_IMAGE.match(blob["mimeType"]):
                    raise RequestInvalid(f"Unsupported MIME type: {blob['mimeType']}")
                try:
                    base64.b64decode(blob["data"], validate=True)
                except (binascii.Error, ValueError) as exc:
                    raise RequestInvalid(
                        f"Invalid value at '{where}[{j}].inline_data.data' (TYPE_BYTES), Base64 decoding failed"
                    ) from exc
                images += 1
            elif "fileData" in part:
                ref = _normalize(part["fileData"], f"{where}[{j}].file_data", {"mimeType", "fileUri"}, {"fileUri"})
                if not re.match(r"^(https?|gs)://", ref["fileUri"]):
                    raise RequestInvalid(f"Invalid file_uri: {ref['fileUri']}")
                images += 1
            else:
                raise RequestInvalid(f"{where}[{j}]: this fake only understands text, image and function parts")
        if calls:
            self._calls_pending = [p["functionCall"]["name"] for p in calls]
            self._last_call_turn = calls
        self._last_was_responses = bool(responses)
        return "".join(texts), images

    def _check_config(self, config: dict) -> dict | None:
        for name in ("temperature",):
            if name in config:
                check_range(config[name], f"generation_config.{name}", 0.0, 2.0)
        if "topP" in config:
            check_range(config["topP"], "generation_config.top_p", 0.0, 1.0)
        for name in ("maxOutputTokens", "candidateCount", "topK", "seed", "logprobs"):
            if name in config:
                check_type(config[name], f"generation_config.{name}", int)
        if "candidateCount" in config:
            check_range(config["candidateCount"], "generation_config.candidate_count", 1, 8)
        if "seed" in config:  # GenerationConfig.seed is an int32
            check_range(config["seed"], "generation_config.seed", -(2**31), 2**31 - 1)
        if "responseLogprobs" in config:
            check_type(config["responseLogprobs"], "generation_config.response_logprobs", bool)
        if "logprobs" in config:
            check_range(config["logprobs"], "generation_config.logprobs", 0, 20)
            if not config.get("responseLogprobs"):
                raise RequestInvalid("generation_config.logprobs: only valid if response_logprobs is true")
        for name in ("presencePenalty", "frequencyPenalty"):
            if name in config:
                check_range(config[name], f"generation_config.{name}", -2.0, 2.0)
        if "stopSequences" in config:
            stops = check_type(config["stopSequences"], "generation_config.stop_sequences", list)
            if len(stops) > 5:
                raise RequestInvalid("generation_config.stop_sequences: at most 5 stop sequences")
        schema = config.get("responseSchema")
        if schema is not None:
            if config.get("responseMimeType") not in ("application/json", "text/x.enum"):
                raise RequestInvalid(
                    "response_mime_type: only application/json and text/x.enum support response_schema"
                )
            _check_schema(schema, "generation_config.response_schema")
        if "responseJsonSchema" in config and schema is not None:
            raise RequestInvalid("response_schema and response_json_schema cannot both be set")
        return schema

    def _generate(self, exchange: Exchange, config: dict) -> tuple[str, str]:
        if config.get("responseMimeType") == "text/x.enum":  # enum output is the bare value
            text = str((exchange.schema or {}).get("enum", [""])[0])
        else:
            text = self.responder(exchange)
        text, stop = apply_stops(text, config.get("stopSequences"))
        text, truncated = truncate_words(text, config.get("maxOutputTokens"))
        return text, "MAX_TOKENS" if truncated and stop is None else "STOP"


def _logprobs(text: str, top: int) -> dict:
    """``avgLogprobs`` and ``logprobsResult`` for ``text`` (a word and the space after it per token)."""
    tokens = [t for t in re.split(r"(?<= )", text) if t]
    chosen = [{"token": t, "tokenId": 100 + i, "logProbability": -0.5 * (1 + i % 3)} for i, t in enumerate(tokens)]
    result: dict[str, Any] = {"chosenCandidates": chosen}
    if top:
        result["topCandidates"] = [
            {"candidates": [c] + [{"token": f"alt{k}", "tokenId": k, "logProbability": c["logProbability"] - k}
                                  for k in range(1, top)]}
            for c in chosen
        ]  # fmt: skip
    average = sum(c["logProbability"] for c in chosen) / len(chosen) if chosen else 0.0
    return {"avgLogprobs": average, "logprobsResult": result}


def _check_schema(schema: Any, where: str) -> None:
    """The OpenAPI subset Gemini's ``Schema`` message accepts."""
    if not isinstance(schema, dict):
        raise RequestInvalid(f"Invalid value at '{where}', expected a Schema object")
    for key in schema:
        if key not in _SCHEMA_FIELDS:
            raise RequestInvalid(
                f"Invalid JSON payload received. Unknown name \"{key}\" at '{where}': Cannot find field."
            )
    kind = schema.get("type")
    if kind is not None and str(kind).upper() not in _SCHEMA_TYPES:
        raise RequestInvalid(
            f"Invalid value at '{where}.type' (type.googleapis.com/google.ai."
            f'generativelanguage.v1beta.Type), "{kind}"'
        )
    if kind is None and "anyOf" not in schema:
        raise RequestInvalid(f"* GenerateContentRequest.{where}.type: must be specified")
    for name, sub in (schema.get("properties") or {}).items():
        _check_schema(sub, f"{where}.properties[{name}].value")
    if "items" in schema:
        _check_schema(schema["items"], f"{where}.items")
    for i, sub in enumerate(schema.get("anyOf") or []):
        _check_schema(sub, f"{where}.any_of[{i}]")
