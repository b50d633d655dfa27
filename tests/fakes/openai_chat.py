"""Fake of OpenAI's chat completions endpoint, streaming included, as fast as a server can answer.

Written from OpenAI's "Create chat completion" and "The chat completion chunk object" references:

* ``POST /v1/chat/completions`` (also ``/chat/completions``) with a chat body checked by
  :func:`~tests.fakes._openai_chat.validate_chat_body`; errors come back as
  ``{"error": {"message", "type", "param", "code"}}``.
* Tools, ``tool_choice``, ``parallel_tool_calls`` and the tool messages of the history are checked, and
  calls made, as :mod:`._openai_chat` describes.
* ``"stream": true``: ``text/event-stream`` of ``chat.completion.chunk`` objects: a first chunk with
  ``delta.role``, one chunk per word of the answer in ``delta.content`` (or, for calls, ``tool_calls``
  pieces, each with its ``index``: the first piece of a call carries ``id``, ``type`` and the function
  ``name`` with empty ``arguments``, the next ones the ``arguments`` in two halves), a chunk with the
  ``finish_reason``; with ``stream_options.include_usage`` a last chunk with empty ``choices`` and
  ``usage``; then ``data: [DONE]``.

Also checked as the API does: ``logit_bias`` values within [-100, 100]; with ``api_key`` set,
``Authorization: Bearer <key>`` (401 ``invalid_api_key`` otherwise). :meth:`FakeServer.fail_next`
scripts other replies, e.g. :data:`QUOTA_BODY`: the 429 OpenAI sends when the account's quota or
credits are used up, with no ``Retry-After``.
The 401 echoes the key it got, as OpenAI's does (a gateway must not pass that on).
``GET /v1/models`` lists ``model``.

``stream_style`` plays servers seen in the wild (default ``"standard"``, as above):

* ``"cut"``: the stream stops after the text, with no ``finish_reason`` chunk and no ``[DONE]`` (an
  upstream that died mid-answer behind a proxy that closed the response cleanly);
* ``"plain_json"``: ``stream: true`` is ignored and the whole ``chat.completion`` comes back as JSON;
* ``"shared_index"``: each tool call comes whole in one piece, every one with ``index: 0`` and its own
  ``id`` (Ollama's and some gateways' parallel calls).

``burst=True`` (the default) writes the whole stream in one go, as a server that generates faster than
the network delivers does: the client receives many events in one read. That is the case where a
client's per-event work (a spinner to clear, a screen to update) must hold up.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from aiohttp import web

from ._openai_chat import chat_completion, validate_chat_body
from ._server import FakeServer, Handler, RequestInvalid, Responder, default_responder

__all__ = ["QUOTA_BODY", "FakeOpenAIChat"]

QUOTA_BODY = {
    "error": {
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
}


class FakeOpenAIChat(FakeServer):
    def __init__(
        self,
        responder: Responder = default_responder,
        *,
        burst: bool = True,
        api_key: str | None = None,
        model: str = "gpt-fake",
        stream_style: str = "standard",
    ) -> None:
        super().__init__()
        self.stream_style = stream_style
        self.responder = responder
        self.burst = burst
        self.api_key = api_key
        self.model = model

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", "/v1/chat/completions", self._handle),
            ("POST", "/chat/completions", self._handle),
            ("GET", "/v1/models", self._models),
        ]

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    def error_body(self, status: int, message: str) -> Any:
        kind = "invalid_request_error" if status < 500 else "server_error"
        return {"error": {"message": message, "type": kind, "param": None, "code": None}}

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            shown = request.headers.get("Authorization", "").removeprefix("Bearer ")
            error = {"message": f"Incorrect API key provided: {shown}.", "type": "invalid_request_error",
                     "param": None, "code": "invalid_api_key"}  # fmt: skip
            return web.json_response({"error": error}, status=401)
        try:
            body = json.loads(await request.read())
            exchange = validate_chat_body(body)
            for token, bias in (body.get("logit_bias") or {}).items():
                if not -100 <= bias <= 100:
                    raise RequestInvalid(f"logit_bias: bias for token {token} must be between -100 and 100")
        except ValueError as exc:
            return web.json_response(self.error_body(400, f"Invalid JSON body: {exc}"), status=400)
        except RequestInvalid as exc:
            return web.json_response(self.error_body(exc.status, str(exc)), status=exc.status)
        reply = chat_completion(body, exchange, self.responder, f"chatcmpl-{len(self.requests)}")
        if not body.get("stream") or self.stream_style == "plain_json":
            return web.json_response(reply)
        return await self._stream(request, body, reply)

    async def _stream(self, request: web.Request, body: dict, reply: dict) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        base = {
            "id": reply["id"],
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body["model"],
        }
        choice = reply["choices"][0]

        def chunk(delta: dict, finish: str | None = None) -> dict:
            return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

        text = choice["message"]["content"]
        chunks = [chunk({"role": "assistant", "content": "" if text is not None else None})]
        chunks += [chunk({"content": word}) for word in re.split(r"(?<= )", text or "") if word]
        for n, call in enumerate(choice["message"].get("tool_calls") or []):
            function, arguments = call["function"], call["function"]["arguments"]
            if self.stream_style == "shared_index":
                chunks.append(chunk({"tool_calls": [{"index": 0, **call}]}))
                continue
            first = {"index": n, "id": call["id"], "type": "function"}
            chunks.append(chunk({"tool_calls": [{**first, "function": {"name": function["name"], "arguments": ""}}]}))
            half = len(arguments) // 2
            for piece in (arguments[:half], arguments[half:]):
                chunks.append(chunk({"tool_calls": [{"index": n, "function": {"arguments": piece}}]}))
        ending = [b"data: [DONE]\n\n"]
        if self.stream_style == "cut":
            ending = []
        else:
            chunks.append(chunk({}, choice["finish_reason"]))
            if (body.get("stream_options") or {}).get("include_usage"):
                chunks.append({**base, "choices": [], "usage": reply["usage"]})
        events = [b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks] + ending
        if self.burst:
            await response.write(b"".join(events))
        else:
            for event in events:
                await response.write(event)
        await response.write_eof()
        return response
