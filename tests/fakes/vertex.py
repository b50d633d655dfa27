"""Fake of Vertex AI's OpenAI-compatible Chat Completions endpoint.

Written from Google Cloud's "Using OpenAI libraries with Vertex AI" reference:

* ``POST /v1beta1/projects/{project}/locations/{location}/endpoints/openapi/chat/completions``
  (``v1`` too), on host ``{location}-aiplatform.googleapis.com``.
* ``Authorization: Bearer <OAuth2 access token>``; a missing or unknown token is 401
  ``UNAUTHENTICATED``.
* ``model`` is ``publisher/model`` (``google/gemini-2.0-flash``).
* Supported OpenAI parameters for Google models: messages, model, max_completion_tokens,
  max_tokens, n, frequency_penalty, presence_penalty, reasoning_effort, response_format,
  seed, stop, stream, temperature, top_p, tools, tool_choice, user, plus Google's
  ``extra_body``. Others (``logit_bias``, ``min_p``...) are rejected here so a client that
  sends them is caught.
* User images: ``image_url`` with a ``gs://`` URI or a ``data:<mime>;base64,`` URL; the
  ``detail`` option is not supported.
* ``POST /token``: a stand-in for Google's OAuth 2.0 token endpoint (``oauth2.googleapis.com/token``)
  for service-account credentials: form ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``
  and a signed JWT ``assertion`` whose claims carry ``scope``, ``aud`` (the token URI), ``iat`` and
  ``exp``; it answers ``{"access_token", "expires_in", "token_type": "Bearer"}`` and accepts that
  token on the chat endpoint. (The signature is not verified.)
* Errors in Google's format ``{"error": {"code", "message", "status"}}``; set
  ``errors_as_list`` to wrap them in a one-element list, which clients must also accept.
"""

from __future__ import annotations

import base64
import itertools
import json
import time
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web

from ._openai_chat import chat_completion, validate_chat_body
from ._server import FakeServer, Handler, RequestInvalid, Responder, default_responder

VERTEX_CHAT_PARAMS = {
    "messages",
    "model",
    "max_completion_tokens",
    "max_tokens",
    "n",
    "frequency_penalty",
    "presence_penalty",
    "reasoning_effort",
    "response_format",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "tools",
    "tool_choice",
    "user",
    "logprobs",
    "top_logprobs",
    "extra_body",
    "modalities",
    "audio",
    "web_search_options",
}

_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


class FakeVertex(FakeServer):
    """``valid_tokens`` are the access tokens the fake accepts (tests add to it)."""

    def __init__(
        self,
        project: str = "test-project",
        location: str = "us-central1",
        valid_tokens: set[str] | None = None,
        responder: Responder = default_responder,
        errors_as_list: bool = False,
    ):
        super().__init__()
        self.project = project
        self.location = location
        self.valid_tokens: set[str] = set(valid_tokens or ())
        self.responder = responder
        self.errors_as_list = errors_as_list
        self.tokens_seen: list[str] = []
        self.token_grants: list[dict[str, Any]] = []
        self.token_lifetime_s = 3600
        self._token_ids = itertools.count(1)

    def routes(self) -> list[tuple[str, str, Handler]]:
        path = "/{version}/projects/{project}/locations/{location}/endpoints/openapi/chat/completions"
        return [("POST", path, self._handle), ("POST", "/token", self._token)]

    def error_body(self, status: int, message: str) -> Any:
        body = {"error": {"code": status, "message": message, "status": _STATUS.get(status, "UNKNOWN")}}
        return [body] if self.errors_as_list else body

    def _error(self, status: int, message: str) -> web.Response:
        return web.json_response(self.error_body(status, message), status=status)

    async def _token(self, request: web.Request) -> web.Response:
        form = {k: v[0] for k, v in parse_qs((await request.read()).decode()).items()}
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        try:
            _header, payload, _signature = form["assertion"].split(".")
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (KeyError, ValueError):
            return web.json_response({"error": "invalid_grant", "error_description": "Invalid JWT."}, status=400)
        if "https://www.googleapis.com/auth/cloud-platform" not in str(claims.get("scope", "")).split():
            return web.json_response({"error": "invalid_scope"}, status=400)
        if not (claims.get("iat", 0) <= time.time() + 60 < claims.get("exp", 0) + 60):
            return web.json_response({"error": "invalid_grant", "error_description": "Invalid JWT time."}, status=400)
        self.token_grants.append(claims)
        token = f"ya29.fake-{next(self._token_ids)}"
        self.valid_tokens.add(token)
        return web.json_response({"access_token": token, "expires_in": self.token_lifetime_s, "token_type": "Bearer"})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        if info["version"] not in ("v1", "v1beta1"):
            return self._error(404, f"API version {info['version']} not found.")
        auth = request.headers.get("Authorization", "")
        token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""
        self.tokens_seen.append(token)
        if token not in self.valid_tokens:
            return self._error(
                401,
                "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                "login cookie or other valid authentication credential.",
            )
        if info["project"] != self.project:
            return self._error(403, f"Permission denied on resource project {info['project']}.")
        if info["location"] != self.location:
            return self._error(400, f"Location {info['location']} is not supported for this project.")
        try:
            body = json.loads(await request.read())
            exchange = validate_chat_body(
                body,
                allowed=VERTEX_CHAT_PARAMS,
                image_url_schemes=("gs://", "data:image/"),
                image_detail=False,
            )
            if "/" not in body["model"]:
                raise RequestInvalid(f"model: expected 'publisher/model', got {body['model']!r}")
            if body.get("stream"):
                raise RequestInvalid("stream: this fake serves only non-streaming requests")
        except ValueError as exc:
            return self._error(400, f"Invalid JSON payload received. {exc}")
        except RequestInvalid as exc:
            return self._error(400, str(exc))
        reply = chat_completion(body, exchange, self.responder, f"vertex-{len(self.requests)}")
        return web.json_response(reply)
