"""An OpenAI chat-completions server that counts: requests and tokens, with their arrival times.

The limit tests check per-window budgets against what this server saw; the cache tests check which
rows reached it. Its usage is deliberately not the client's estimate: ``prompt_tokens`` is the number
of characters of the messages' text divided by ``chars_per_token`` (default 2, where infermux
estimates 4), so a client that never corrects its estimate from reported usage overruns an
input-tokens budget. ``completion_tokens`` is the number of words of the answer (an echo of the last
user message, cut at ``max_tokens`` words).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes._openai_chat import chat_completion, validate_chat_body
from tests.fakes._server import FakeServer, Handler, RequestInvalid


@dataclass(frozen=True)
class Seen:
    at: float  # time.monotonic() at arrival
    prompt_tokens: int
    completion_tokens: int
    text: str  # the last user message


class CountingChat(FakeServer):
    def __init__(self, *, chars_per_token: int = 2, latency_s: float = 0.0) -> None:
        super().__init__()
        self.chars_per_token = chars_per_token
        self.latency_s = latency_s
        self.seen: list[Seen] = []
        self._seen_lock = threading.Lock()

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [("POST", "/v1/chat/completions", self._chat)]

    async def _chat(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        body: Any = await request.json()
        try:
            exchange = validate_chat_body(body)
        except RequestInvalid as exc:
            return web.json_response(self.error_body(exc.status, str(exc)), status=exc.status)
        reply = chat_completion(body, exchange, lambda ex: f"echo {ex.turns[-1][1]}", "chatcmpl-count")
        chars = sum(len(text) for _, text in exchange.turns) + len(exchange.system or "")
        prompt = max(1, chars // self.chars_per_token)
        usage = reply["usage"]
        usage["prompt_tokens"] = prompt
        usage["total_tokens"] = prompt + usage["completion_tokens"]
        with self._seen_lock:
            self.seen.append(Seen(arrived, prompt, usage["completion_tokens"], exchange.turns[-1][1]))
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        return web.json_response(reply)

    def max_in_window(self, window: float, what: str = "requests") -> int:
        """The most requests (or ``prompt_tokens`` / ``completion_tokens``) that arrived within any span
        of ``window`` seconds."""
        with self._seen_lock:
            seen = sorted(self.seen, key=lambda s: s.at)
        best = 0
        for i, first in enumerate(seen):
            inside = [s for s in seen[i:] if s.at - first.at < window]
            total = len(inside) if what == "requests" else sum(getattr(s, what) for s in inside)
            best = max(best, total)
        return best
