"""A recording, streaming HTTP proxy for chat tests: it sits between the client and a real server.

Every request is recorded (see :class:`~tests.fakes._server.FakeServer`) and forwarded to ``upstream``;
the reply is relayed line by line as it arrives, so server-sent events keep their timing. A test can
ask the proxy to **hold** a streamed reply after ``n`` events (:meth:`StreamProxy.hold_after`): the
client then has part of the answer while the rest is provably not delivered yet, until
:meth:`StreamProxy.release`. ``forwarded_text()`` is the ``delta.content`` relayed in the current reply.
"""

from __future__ import annotations

import asyncio
import json
import threading

import aiohttp
from aiohttp import web

from tests.fakes._server import RECORDED, FakeServer, Handler

__all__ = ["StreamProxy"]


class StreamProxy(FakeServer):
    def __init__(self, upstream: str) -> None:
        super().__init__()
        self.upstream = upstream.rstrip("/")
        self.held = threading.Event()
        self._hold_after: int | None = None
        self._gate: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None
        self._text: list[str] = []

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [("*", "/{tail:.*}", self._forward)]

    # ------------------------------------------------------------------ test controls
    def hold_after(self, events: int) -> None:
        """Hold the next streamed replies after ``events`` data events, until :meth:`release`."""
        self.held.clear()
        self._hold_after = events
        self._call(lambda gate: gate.clear())

    def release(self) -> None:
        self._hold_after = None
        self._call(lambda gate: gate.set())

    def forwarded_text(self) -> str:
        return "".join(self._text)

    def _call(self, action: object) -> None:
        assert self._loop is not None

        def run() -> None:
            if self._gate is None:
                self._gate = asyncio.Event()
            action(self._gate)  # type: ignore[operator]

        self._loop.call_soon_threadsafe(run)

    # ------------------------------------------------------------------ relay
    async def _forward(self, request: web.Request) -> web.StreamResponse:
        recorded = request[RECORDED]
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        if self._gate is None:
            self._gate = asyncio.Event()
        self._text = []
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        url = self.upstream + request.path_qs
        async with self._session.request(request.method, url, data=recorded.body, headers=headers) as upstream:
            reply = web.StreamResponse(status=upstream.status)
            reply.content_type = upstream.content_type
            await reply.prepare(request)
            events = 0
            try:
                async for line in upstream.content:
                    await reply.write(line)
                    if line.startswith(b"data:"):
                        events += 1
                        self._note_text(line)
                    elif not line.strip() and self._hold_after is not None and events >= self._hold_after:
                        self.held.set()  # after the blank line that completes the event
                        await self._gate.wait()
                await reply.write_eof()
            except (ConnectionResetError, aiohttp.ClientConnectionResetError):
                pass  # the client went away (Ctrl-C): closing upstream tells the server to stop
            return reply

    def _note_text(self, line: bytes) -> None:
        try:
            data = json.loads(line[5:])
            content = data["choices"][0]["delta"].get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return
        if content:
            self._text.append(content)

    async def _stop_app(self) -> None:
        if self._session is not None:
            await self._session.close()
        await super()._stop_app()
