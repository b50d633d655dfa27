"""An OpenAI chat-completions server with a true sliding-window rate limit that it announces in headers.

It allows ``limit`` requests in any ``window`` seconds (the provider's "per minute", compressed for
tests) and answers 429 to any request beyond that, as a provider does. Every reply, 429s included,
announces the limit the way providers do:

* ``style="openai"``: ``x-ratelimit-limit-requests``, ``x-ratelimit-remaining-requests`` and
  ``x-ratelimit-reset-requests`` as a Go-style duration (``1s``, ``250ms``, ``1m0s``);
* ``style="anthropic"``: ``anthropic-ratelimit-requests-limit``, ``-remaining`` and ``-reset`` as an
  RFC 3339 instant.

The reset is when the limit is whole again (the newest request in the window leaves it), as both
providers define it. ``others`` requests are counted at start-up as if another client of the same key
had just sent them: the job sees a budget smaller than the announced limit, which only the
``remaining`` header tells. ``rejected`` counts the 429s: a request the server had to refuse.
"""

from __future__ import annotations

import asyncio
import datetime
import threading
import time
from collections import deque
from typing import Any

from aiohttp import web

from tests.fakes._openai_chat import chat_completion, validate_chat_body
from tests.fakes._server import FakeServer, Handler, RequestInvalid


def go_duration(seconds: float) -> str:
    """``seconds`` as OpenAI writes a reset: ``20ms`` below a second, else ``1m2.5s`` / ``3s``."""
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


class RateLimitedChat(FakeServer):
    def __init__(
        self, *, limit: int, window: float, others: int = 0, style: str = "openai", latency_s: float = 0.005
    ) -> None:
        super().__init__()
        self.limit = limit
        self.window = window
        self.style = style
        self.latency_s = latency_s
        self.rejected = 0
        self.answered = 0
        self.arrivals: list[float] = []  # monotonic arrival times of the requests answered
        self._times: deque[float] = deque([time.monotonic()] * others)
        self._count_lock = threading.Lock()

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [("POST", "/v1/chat/completions", self._chat)]

    def _headers(self, now: float) -> dict[str, str]:
        remaining = max(0, self.limit - len(self._times))
        reset_s = max(0.0, self._times[-1] + self.window - now) if self._times else 0.0
        if self.style == "anthropic":
            instant = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=reset_s)
            return {
                "anthropic-ratelimit-requests-limit": str(self.limit),
                "anthropic-ratelimit-requests-remaining": str(remaining),
                "anthropic-ratelimit-requests-reset": instant.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            }
        return {
            "x-ratelimit-limit-requests": str(self.limit),
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": go_duration(reset_s),
        }

    async def _chat(self, request: web.Request) -> web.Response:
        body: Any = await request.json()
        with self._count_lock:
            now = time.monotonic()
            while self._times and self._times[0] <= now - self.window:
                self._times.popleft()
            over = len(self._times) >= self.limit
            if over:
                self.rejected += 1
            else:
                self._times.append(now)
                self.arrivals.append(now)
            headers = self._headers(now)
        if over:
            message = f"Rate limit reached for requests: Limit {self.limit}, Used {self.limit}, Requested 1."
            error = {"message": message, "type": "requests", "code": "rate_limit_exceeded"}
            return web.json_response({"error": error}, status=429, headers=headers)
        try:
            exchange = validate_chat_body(body)
        except RequestInvalid as exc:
            return web.json_response(self.error_body(exc.status, str(exc)), status=exc.status, headers=headers)
        reply = chat_completion(body, exchange, lambda ex: f"echo {ex.turns[-1][1]}", "chatcmpl-limited")
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        with self._count_lock:
            self.answered += 1
        return web.json_response(reply, headers=headers)

    def max_in_window(self, span: float | None = None) -> int:
        """The most answered requests that arrived within any span of ``span`` (default ``window``) seconds."""
        span = self.window if span is None else span
        with self._count_lock:
            times = sorted(self.arrivals)
        best, first = 0, 0
        for last, at in enumerate(times):
            while at - times[first] >= span:
                first += 1
            best = max(best, last - first + 1)
        return best
