"""In-process stand-ins for a server, for ``Transport(handler=...)`` and ``engine.transport_handler``.

For tests of remote behaviour that need no socket (retry policy, row errors, parsing): the transport
calls the handler instead of opening a connection, and everything above the socket runs as it does
against a real server. Tests whose point is real HTTP (dropped connections, truncated bodies, proxies,
keep-alive) stay on the servers of :mod:`tests.servers`.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from infermux.engines.remote.http.transport import HttpRequest, HttpResponse


def last_user_text(payload: dict[str, Any]) -> str:
    for message in reversed(payload.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return "\n".join(p.get("text", "") for p in content or [] if p.get("type") == "text")
    return ""


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> HttpResponse:
    return HttpResponse.json({"error": {"message": message, "type": "handler_fault", "code": status}}, status, headers)


@dataclass
class EchoHandler:
    """OpenAI chat completions answering ``"echo: <last user text>"``, as ``benchmarks/stub_server.py`` does.

    Scripted faults, like ``tests/fakes/fault_proxy.py``: each request body whose text ``faulty`` accepts
    first meets ``max_faults_per_body`` faults (``faults`` in turn: an HTTP status, ``"drop"`` for a lost
    connection, ``"timeout"`` for a server that never answers); ``retry_after`` is sent with a 429
    (``"date:N"``: an HTTP date N seconds ahead)."""

    faults: tuple[int | str, ...] = ()
    max_faults_per_body: int = 0
    retry_after: str | None = None
    faulty: Callable[[str], bool] = lambda text: True
    requests: int = 0
    served: collections.Counter[str] = field(default_factory=collections.Counter)
    _per_body: collections.Counter[bytes] = field(default_factory=collections.Counter)

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        self.requests += 1
        payload = json.loads(request.body)
        if not isinstance(payload, dict) or not isinstance(payload.get("messages"), list):
            return _error(400, "'messages' is required and must be a list")
        text = last_user_text(payload)
        nth = self._per_body[request.body]
        self._per_body[request.body] += 1
        if self.faults and nth < self.max_faults_per_body and self.faulty(text):
            fault = self.faults[nth % len(self.faults)]
            self.served[str(fault)] += 1
            if fault == "drop":
                raise ConnectionResetError("the handler dropped the connection")
            if fault == "timeout":
                await asyncio.sleep(3600)
            if fault == 429:
                return _error(429, "rate limited (handler)", self._retry_after())
            return _error(int(fault), f"injected {fault} (handler)")
        words = max(1, len(text.split()))
        return HttpResponse.json({
            "id": f"chatcmpl-handler-{self.requests}", "object": "chat.completion", "created": int(time.time()),
            "model": payload.get("model", "stub"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": f"echo: {text}"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": words, "completion_tokens": words + 1, "total_tokens": 2 * words + 1},
        })  # fmt: skip

    def _retry_after(self) -> dict[str, str] | None:
        if self.retry_after is None:
            return None
        if self.retry_after.startswith("date:"):
            ahead = float(self.retry_after.removeprefix("date:"))
            return {"Retry-After": email.utils.formatdate(time.time() + ahead, usegmt=True)}
        return {"Retry-After": self.retry_after}
