"""An OpenAI chat-completions server that counts the answers it sent, per request text, and can hold.

Used in front of ``infermux serve`` as a gateway's upstream: a batch test reads from :attr:`answered`
how often each row was answered (a row answered twice shows as 2). With ``hold_after = N`` the server
answers N requests, then holds every later one without answering (as a slow upstream does) until
``hold_after`` is set back to None; held requests are never answered, so they are never counted.
Answers echo the last user message (``echo <text>``), in the chat-completions shape of
:mod:`tests.fakes._openai_chat`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any

from aiohttp import web

from tests.fakes._openai_chat import chat_completion, validate_chat_body
from tests.fakes._server import FakeServer, Handler, RequestInvalid


class RowCounter(FakeServer):
    def __init__(self, *, latency_s: float = 0.0) -> None:
        super().__init__()
        self.latency_s = latency_s
        self.hold_after: int | None = None
        self.answered: Counter[str] = Counter()
        self.arrivals: list[float] = []  # time.monotonic() of each request
        self._count_lock = threading.Lock()
        self._granted = 0

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [("POST", "/v1/chat/completions", self._chat)]

    def error_body(self, status: int, message: str) -> Any:
        return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}

    @property
    def total(self) -> int:
        with self._count_lock:
            return sum(self.answered.values())

    def reset(self) -> None:
        with self._count_lock:
            self.answered.clear()
            self.arrivals.clear()
            self._granted = 0
        self.hold_after = None

    def _grant(self) -> bool:
        """Whether a request may be answered now (under ``hold_after``, the first N requests may)."""
        with self._count_lock:
            if self.hold_after is not None and self._granted >= self.hold_after:
                return False
            self._granted += 1
            return True

    async def _chat(self, request: web.Request) -> web.Response:
        body: Any = await request.json()
        try:
            exchange = validate_chat_body(body)
        except RequestInvalid as exc:
            return web.json_response(self.error_body(exc.status, str(exc)), status=exc.status)
        with self._count_lock:
            self.arrivals.append(time.monotonic())
        while not self._grant():
            await asyncio.sleep(0.02)  # held: a client that goes away leaves it unanswered (and uncounted)
            if request.transport is None or request.transport.is_closing():
                return web.Response(status=499)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        text = exchange.turns[-1][1]
        reply = chat_completion(body, exchange, lambda ex: f"echo {ex.turns[-1][1]}", "chatcmpl-rowcounter")
        with self._count_lock:
            self.answered[text] += 1
        return web.json_response(reply)
