"""OpenAI chat-completion requests on the wire, checked (answers go out through :mod:`infermux.serve.answers`).

A request is validated against OpenAI's "Create chat completion" fields (unknown fields are refused,
as OpenAI refuses them), turned into a :class:`~infermux.types.Conversation` and a
:class:`~infermux.configs.generation_params.GenerationParams` built on the server's configured
defaults, and checked by the engine's own ``check``. Every problem is an
:class:`ApiError`, answered as ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import base64
import binascii
import functools
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from infermux.configs.generation_params import GenerationParams, GuidedDecodingParams
from infermux.engines.capabilities import TOOL_PARAMS, Capabilities, refuse_unsupported
from infermux.engines.tool_calls import tool_choice_problem
from infermux.errors import UnsupportedParamError
from infermux.types import (
    ContentItem,
    Conversation,
    Message,
    Role,
    Tool,
    ToolCall,
    Type,
)

__all__ = [
    "ApiError",
    "ChatRequest",
    "Prepared",
    "error_body",
    "prepare",
]


class ApiError(Exception):
    """An error answered to the client in OpenAI's format."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# ---------------------------------------------------------------------- the request


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImageUrl(_Strict):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageUrl


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart | ImagePart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class ChatRequest(_Strict):
    """The fields of OpenAI's chat-completions request that a client may send."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    n: int | None = Field(default=None, ge=1, le=128)
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    seed: int | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    # Extensions that vLLM and llama.cpp servers accept too.
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)


def parse_request(data: Any) -> ChatRequest:
    if not isinstance(data, dict):
        raise ApiError("The request body must be a JSON object.")
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as exc:
        raise _from_validation(exc) from None


def _from_validation(exc: ValidationError) -> ApiError:
    # Union members add their type names to the location: keep only the path the client wrote. Of the
    # errors a union reports (one per member), the deepest is the one that says what is wrong.
    errors = exc.errors(include_url=False)
    located = [([str(p) for p in e["loc"] if not _is_union_tag(p)], e) for e in errors]
    loc, err = max(located, key=lambda pair: len(pair[0]))
    param = ".".join(loc) or None
    if err["type"] == "extra_forbidden":
        return ApiError(f"Unrecognized request argument supplied: {param}", param=param)
    if err["type"] == "missing":
        return ApiError(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    value = err.get("input")
    shown = repr(value)[:80] if not isinstance(value, (dict, list)) else type(value).__name__
    return ApiError(f"Invalid value for '{param}': {err['msg']} (got {shown}).", param=param, code="invalid_value")


_TAGS = frozenset({"str", "int", "float", "bool", "none", "TextPart", "ImagePart"})


def _is_union_tag(part: str | int) -> bool:
    return isinstance(part, str) and (part in _TAGS or part.startswith(("list[", "dict[", "function-", "literal[")))


# ---------------------------------------------------------------------- request → infermux


@dataclass
class Prepared:
    """A checked request: what to run and how to answer."""

    request: ChatRequest
    conversation: Conversation
    generation: GenerationParams
    stream: bool
    include_usage: bool
    samples: bool = False
    """Answered as ``generation.n`` choices and/or with log-probabilities (from ``metadata["samples"]``)."""


_ROLES = {"system": Role.SYSTEM, "developer": Role.SYSTEM, "user": Role.USER, "assistant": Role.ASSISTANT}
_ROLES["tool"] = Role.TOOL

# GenerationParams field → the request parameter that sets it (for capability errors).
_PARAM_OF = {"stop_strings": "stop", "guided_decoding": "response_format", "max_new_tokens": "max_tokens"}


#: The request fields that choose how tokens are sampled: a request that sets none of them gets the
#: server's ``preset`` (serve without a config), one that sets any gets exactly what it asked for.
SAMPLING_FIELDS = ("temperature", "top_p", "frequency_penalty", "presence_penalty")


def prepare(
    data: Any,
    *,
    served_model: str,
    defaults: GenerationParams,
    caps: Capabilities,
    engine_name: str,
    preset: dict[str, float] | None = None,
    check: Check | None = None,
) -> Prepared:
    """Check ``data`` and turn it into a conversation and generation settings, or raise :class:`ApiError`.

    ``preset``: sampling settings for requests that set none of :data:`SAMPLING_FIELDS`. ``check``: the
    engine's :meth:`~infermux.engines.base.InferenceEngine.check` with the server's settings as its
    ``baseline`` (what the request changes and the engine cannot honour raises
    :class:`~infermux.errors.UnsupportedParamError`); without an engine, the same rule over ``caps``."""
    req = parse_request(data)
    if req.model != served_model:
        raise ApiError(
            f"The model `{req.model}` does not exist on this server; it serves `{served_model}` (GET /v1/models).",
            status=404,
            param="model",
            code="model_not_found",
        )
    if req.top_logprobs is not None and not req.logprobs:
        raise ApiError("top_logprobs requires logprobs to be set to true.", param="top_logprobs")
    if req.stream_options is not None and not req.stream:
        raise ApiError("stream_options is only allowed when stream is true.", param="stream_options")
    conversation = Conversation(messages=[_message(m, i) for i, m in enumerate(req.messages)], tools=_tools(req))
    if conversation.has_images and not caps.images:
        raise ApiError(f"{engine_name} does not accept images.", param="messages", code="unsupported_parameter")
    if preset and all(getattr(req, name) is None for name in SAMPLING_FIELDS):
        defaults = defaults.model_copy(update=preset)
    generation = _generation(req, defaults)
    if check is None:
        check = functools.partial(refuse_unsupported, engine_name, caps, baseline=defaults)
    try:
        check(generation, tools=bool(conversation.tools))
    except UnsupportedParamError as exc:
        raise unsupported(exc, engine_name) from None
    if req.tool_choice is not None:  # the client's own choice must fit its tools (the server's is checked per row)
        problem = tool_choice_problem(conversation.tools, generation)
        if problem is not None:
            raise ApiError(problem, param="tool_choice", code="invalid_value")
    include_usage = bool(req.stream and req.stream_options and req.stream_options.include_usage)
    samples = generation.n > 1 or generation.logprobs
    return Prepared(req, conversation, generation, bool(req.stream), include_usage, samples)


class Check(Protocol):
    """``engine.check`` as :func:`prepare` calls it."""

    def __call__(self, generation: GenerationParams, *, tools: bool) -> None: ...


def unsupported(exc: UnsupportedParamError, engine_name: str) -> ApiError:
    """The 400 for the first setting the engine refused, named as the request names it."""
    name = exc.params[0] if exc.params else ""
    param = _PARAM_OF.get(name, name)
    if name == "guided_decoding":
        message = f"{engine_name} cannot constrain output to a JSON schema."
    elif name == "tools" or name in TOOL_PARAMS:
        message = f"{engine_name} cannot call tools."
    else:
        message = f"{engine_name} does not support '{param}'."
    return ApiError(message, param=param or None, code="unsupported_parameter")


def _message(m: ChatMessage, index: int) -> Message:
    extra: dict[str, Any] = {}
    if m.tool_calls:
        if m.role != "assistant":
            raise ApiError("Only assistant messages carry tool_calls.", param=f"messages.{index}.tool_calls")
        try:
            extra["tool_calls"] = [ToolCall.model_validate(call) for call in m.tool_calls]
        except ValidationError as exc:
            raise ApiError(
                f"Invalid tool call: {exc.errors(include_url=False)[0]['msg']}.", param=f"messages.{index}.tool_calls"
            ) from None
    if m.role == "tool":
        if not m.tool_call_id:
            raise ApiError(
                "A tool message needs the tool_call_id of the call it answers.",
                param=f"messages.{index}.tool_call_id",
                code="missing_required_parameter",
            )
        extra["tool_call_id"] = m.tool_call_id
    if m.content is None or isinstance(m.content, str):
        content = m.content if m.content is not None or m.tool_calls else ""  # null only beside tool calls
        return Message(role=_ROLES[m.role], content=content, **extra)
    items: list[ContentItem] = []
    for j, part in enumerate(m.content):
        if isinstance(part, TextPart):
            items.append(ContentItem(type=Type.TEXT, content=part.text))
        else:
            items.append(_image(part.image_url.url, f"messages.{index}.content.{j}.image_url.url"))
    return Message(role=_ROLES[m.role], content=items, **extra)


def _tools(req: ChatRequest) -> list[Tool] | None:
    if not req.tools:
        return None
    try:
        return [Tool.model_validate(tool) for tool in req.tools]
    except ValidationError as exc:
        raise ApiError(f"Invalid tool: {exc.errors(include_url=False)[0]['msg']}.", param="tools") from None


def _image(url: str, param: str) -> ContentItem:
    if url.startswith("data:"):
        head, _, payload = url.partition(",")
        if not head.startswith("data:image/") or ";base64" not in head:
            raise ApiError("Image data URLs must be base64 images (data:image/...;base64,...).", param=param)
        try:
            raw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError("The image data URL is not valid base64.", param=param) from None
        return ContentItem(type=Type.IMAGE_BINARY, binary=raw)
    if url.startswith(("http://", "https://")):
        return ContentItem(type=Type.IMAGE_URL, content=url)
    raise ApiError("Image URLs must be http(s) or data: URLs.", param=param)


def _generation(req: ChatRequest, defaults: GenerationParams) -> GenerationParams:
    update: dict[str, Any] = {}
    limit = req.max_completion_tokens or req.max_tokens
    if limit is not None:
        update["max_new_tokens"] = limit
    for name in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "min_p", "n", "logprobs"):
        value = getattr(req, name)
        if value is not None:
            update[name] = value
    if req.stop is not None:
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop)
        if len(stops) > 4 or any(not s for s in stops):
            raise ApiError("stop takes up to 4 non-empty strings.", param="stop")
        update["stop_strings"] = stops or None
    if req.logit_bias is not None:
        update["logit_bias"] = req.logit_bias
    if req.logprobs:
        update["top_logprobs"] = req.top_logprobs or 0
    fmt = req.response_format
    if fmt is not None and fmt.type != "text":
        schema: Any = {"type": "object"}
        if fmt.type == "json_schema":
            spec = fmt.json_schema or {}
            if not isinstance(spec.get("schema", {}), dict):
                raise ApiError("response_format.json_schema.schema must be an object.", param="response_format")
            schema = spec.get("schema") or {"type": "object"}
        update["guided_decoding"] = GuidedDecodingParams(json=schema)
    if req.tool_choice is not None:
        update["tool_choice"] = req.tool_choice
    if req.parallel_tool_calls is not None:
        update["parallel_tool_calls"] = req.parallel_tool_calls
    data = defaults.model_dump()
    data.update(update)
    try:
        return GenerationParams.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field_name = str(err["loc"][0]) if err["loc"] else ""
        param = _PARAM_OF.get(field_name, field_name)
        raise ApiError(f"Invalid value for '{param}': {err['msg']}.", param=param, code="invalid_value") from None
