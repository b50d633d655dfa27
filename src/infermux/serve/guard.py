"""What a request must satisfy before any work is done for it: its size and shape, how fast its body
arrives, and, for browsers, which ``Host``, ``Origin`` and ``Content-Type`` it may carry.

- :class:`Limits` bounds a request: body size and arrival time, JSON nesting, the number and size of
  messages. Every bound is answered with an OpenAI error naming it (400, 408, 413).
- :func:`require_key` asks for the server's key on the API and ``/metrics``.
- :func:`browser_guard` is the middleware that keeps web pages the user opens from driving the server:
  a ``Host`` that is not an address of this server, ``localhost`` or a name the user allowed is refused
  (DNS rebinding); so is a request carrying the ``Origin`` of another site unless that origin is on the
  CORS allow-list (off by default); a ``POST`` must be JSON (415 otherwise), so no form or ``text/plain``
  request, which browsers send cross-origin without asking, is ever read (but a file upload to
  ``/v1/files``, which OpenAI's API sends as multipart, and a batch's cancel without a body).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from infermux.serve.wire import ApiError
from infermux.text import first_surrogate

__all__ = ["Limits", "browser_guard", "check_request", "cors_headers", "parse_json", "read_body", "require_key"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Limits:
    """Bounds on one request (``infermux serve`` flags of the same names; see docs/serve.md)."""

    max_body: int = 8 * 2**20
    """Largest body, in bytes (413)."""
    body_timeout: float = 30.0
    """Seconds the whole body may take to arrive once the headers are in (408)."""
    max_depth: int = 64
    """Deepest nesting of objects and arrays in the body (400)."""
    max_messages: int = 2048
    """Most messages in one request (400)."""
    max_message_chars: int = 2**20
    """Most characters of text in one message (400)."""
    max_prompt_chars: int = 4 * 2**20
    """Most characters of text in all messages together (413)."""


async def read_body(request: web.Request, limits: Limits) -> bytes:
    """The body, or a 408 (connection closed) when it takes longer than ``limits.body_timeout``."""
    try:
        return await asyncio.wait_for(request.read(), limits.body_timeout)
    except asyncio.TimeoutError:
        raise ApiError(
            f"The request body did not arrive within this server's limit of {limits.body_timeout:g} seconds.",
            status=408,
            code="request_timeout",
            headers={"Connection": "close"},
        ) from None


def parse_json(body: bytes) -> Any:
    """The body as JSON, or a 400 (bad JSON, or nested too deeply for the parser)."""
    try:
        return json.loads(body)
    except RecursionError:
        raise ApiError("The JSON body is nested too deeply.", code="invalid_json") from None
    except ValueError as exc:
        raise ApiError(f"We could not parse the JSON body of your request ({exc}).", code="invalid_json") from None


def check_request(data: Any, limits: Limits) -> None:
    """Refuse a body nested deeper than ``limits.max_depth``, any string that is not valid Unicode (a lone
    surrogate such as ``"\\ud800"``), and messages past their limits."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(data, ())]
    while stack:
        node, path = stack.pop()
        if len(path) > limits.max_depth:
            raise ApiError(
                f"The request is nested more than {limits.max_depth} levels deep (at '{_dotted(path)}').",
                param=_dotted(path[:3]) or None,
                code="too_deeply_nested",
            )
        if isinstance(node, dict):
            for key, value in node.items():
                _check_text(key, path)
                stack.append((value, (*path, str(key))))
        elif isinstance(node, list):
            stack.extend((value, (*path, str(i))) for i, value in enumerate(node))
        elif isinstance(node, str):
            _check_text(node, path)
    if isinstance(data, dict) and isinstance(data.get("messages"), list):
        _check_messages(data["messages"], limits)


def _check_text(text: str, path: tuple[str, ...]) -> None:
    if first_surrogate(text) is not None:
        param = _dotted(path) or None
        raise ApiError(
            f"Invalid value for '{param}': the string is not valid Unicode (it holds a lone surrogate such as "
            "\\ud800); send text as UTF-8.",
            param=param,
            code="invalid_value",
        )


def _check_messages(messages: list[Any], limits: Limits) -> None:
    if len(messages) > limits.max_messages:
        raise ApiError(
            f"The request has {len(messages)} messages, more than this server's limit of {limits.max_messages}.",
            param="messages",
            code="too_many_messages",
        )
    total = 0
    for index, message in enumerate(messages):
        size = _text_chars(message.get("content") if isinstance(message, dict) else None)
        if size > limits.max_message_chars:
            raise ApiError(
                f"Message {index} has {size} characters of text, more than this server's limit of "
                f"{limits.max_message_chars}.",
                param=f"messages.{index}.content",
                code="message_too_large",
            )
        total += size
    if total > limits.max_prompt_chars:
        raise ApiError(
            f"The messages have {total} characters of text, more than this server's limit of "
            f"{limits.max_prompt_chars}.",
            status=413,
            param="messages",
            code="prompt_too_large",
        )


def _text_chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(p["text"]) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return 0


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path)


def require_key(key: str | None) -> Any:
    """The middleware asking for ``Authorization: Bearer KEY`` on the API and ``/metrics`` (timing-safe)."""

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if key and (request.path.startswith("/v1/") or request.path == "/metrics"):
            given = request.headers.get("Authorization", "")
            token = given[7:] if given[:7].lower() == "bearer " else ""
            # A header's bytes that are not UTF-8 arrive as surrogate escapes: compare the bytes as sent.
            if not hmac.compare_digest(token.encode("utf-8", "surrogateescape"), key.encode()):
                raise ApiError(
                    "Incorrect or missing API key: send 'Authorization: Bearer <key>' with the server's --api-key.",
                    status=401,
                    code="invalid_api_key",
                )
        return await handler(request)

    return auth


# ---------------------------------------------------------------------- browsers


def _host_name(value: str) -> str:
    """``value`` (a ``Host`` header, or an origin's netloc) without its port, lower-case, no brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_allowed(host: str | None, allowed: frozenset[str]) -> bool:
    """A request for ``host`` is one this server may answer: no header (not a browser), an IP address
    (a page cannot rebind one), ``localhost``, or a name in ``allowed`` (``*``: any)."""
    if not host:
        return True
    name = _host_name(host)
    return _is_ip(name) or name == "localhost" or name.endswith(".localhost") or name in allowed or "*" in allowed


def browser_guard(allowed_hosts: frozenset[str], cors_origins: frozenset[str]) -> Any:
    """The middleware: ``Host`` check, ``Origin`` check and CORS, JSON-only ``POST`` (see the module doc)."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host")
        if not host_allowed(host, allowed_hosts):
            raise ApiError(
                f"This server does not answer requests for the host {_host_name(host or '')!r} (a protection "
                "against DNS rebinding). If you reach it under that name, start it with --allowed-host NAME.",
                status=403,
                code="host_not_allowed",
            )
        origin = request.headers.get("Origin")
        if origin is not None and not _origin_allowed(origin, host, cors_origins):
            raise ApiError(
                f"Cross-origin requests from {origin!r} are refused. To let a web page on that origin use "
                f"this server, start it with --cors-origin {origin}.",
                status=403,
                code="origin_not_allowed",
            )
        if request.method == "OPTIONS" and origin is not None and "Access-Control-Request-Method" in request.headers:
            return web.Response(status=204, headers={
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": "Authorization, Content-Type",
                "Access-Control-Max-Age": "600",
            })  # fmt: skip
        if request.method == "POST" and not _is_json(request.content_type) and not _other_body_allowed(request):
            raise ApiError(
                f"Request bodies must be JSON: send 'Content-Type: application/json' (got {request.content_type!r}).",
                status=415,
                code="unsupported_media_type",
            )
        return await handler(request)

    return guard


def cors_headers(cors_origins: frozenset[str]) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """An ``on_response_prepare`` hook: the CORS headers for an allowed origin, on every response."""

    async def add(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin is not None and (origin in cors_origins or "*" in cors_origins):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"

    return add


def _origin_allowed(origin: str, host: str | None, cors_origins: frozenset[str]) -> bool:
    """The page's own server (same host and port), or an origin on the allow-list."""
    same = urlsplit(origin).netloc.lower() == (host or "").lower()
    return same or origin in cors_origins or "*" in cors_origins


def _other_body_allowed(request: web.Request) -> bool:
    """A POST that need not be JSON: a file upload (``POST /v1/files``, multipart as OpenAI's API has it)
    and a batch's cancel without a body (``POST /v1/batches/{id}/cancel``). Both carry the key when the server has
    one, and a foreign page's ``Origin`` was refused above."""
    if request.path == "/v1/files":
        return request.content_type == "multipart/form-data"
    return request.path.startswith("/v1/batches/") and request.path.endswith("/cancel") and not request.body_exists


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )
