"""A small aiohttp server on 127.0.0.1 that runs in a background thread.

Every fake provider in this package builds on :class:`FakeServer`: it binds a free port,
records each request it receives (method, path, query, headers, body) and lets a test
script failures ahead of time (``fail_next``) to exercise error paths.

The fakes validate what they receive and answer bad requests in the provider's own error
format, so a client that sends a wrong field fails the test instead of passing silently.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any = None
    form: dict[str, Any] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


RECORDED: Any = web.RequestKey("recorded", RecordedRequest) if hasattr(web, "RequestKey") else "recorded"


@dataclass
class ScriptedFailure:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class FakeServer:
    """Base class: subclasses add routes in :meth:`routes` and format errors."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._failures: deque[ScriptedFailure] = deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ----------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeServer:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._start_app())
            except BaseException as exc:  # reported to the starting thread
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._stop_app())
            loop.close()

        self._thread = threading.Thread(target=run, name=type(self).__name__, daemon=True)
        self._thread.start()
        ready.wait(timeout=30)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop = None
        self._thread = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _start_app(self) -> None:
        app = web.Application(middlewares=[self._record_middleware], client_max_size=512 * 2**20)
        for method, path, handler in self.routes():
            app.router.add_route(method, path, handler)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and getattr(server, "sockets", None)
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _stop_app(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------ hooks
    def routes(self) -> list[tuple[str, str, Handler]]:
        raise NotImplementedError

    def error_body(self, status: int, message: str) -> Any:
        """The provider's error body for ``status`` with ``message``."""
        return {"error": {"message": message}}

    # ---------------------------------------------------------------- scripting
    def fail_next(
        self,
        status: int,
        message: str = "scripted failure",
        *,
        times: int = 1,
        headers: dict[str, str] | None = None,
        body: Any = None,
    ) -> None:
        """Answer the next ``times`` requests with ``status`` in the provider's error format."""
        payload = body if body is not None else self.error_body(status, message)
        with self._lock:
            for _ in range(times):
                self._failures.append(ScriptedFailure(status, payload, dict(headers or {})))

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self._failures.clear()

    # ---------------------------------------------------------------- internals
    @web.middleware
    async def _record_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        body = await request.read()
        parsed: Any = None
        if body and request.content_type == "application/json":
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=dict(request.headers),
            body=body,
            json=parsed,
        )
        with self._lock:
            self.requests.append(recorded)
            failure = self._failures.popleft() if self._failures else None
        if failure is not None:
            return web.json_response(failure.body, status=failure.status, headers=failure.headers)
        request[RECORDED] = recorded
        return await handler(request)


class RequestInvalid(Exception):
    """Raised by validators; the fake turns it into the provider's error body."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def check_keys(obj: Any, where: str, allowed: Collection[str], required: Collection[str] = ()) -> dict:
    """Reject a non-object, unknown keys and missing required keys."""
    if not isinstance(obj, dict):
        raise RequestInvalid(f"{where}: expected an object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise RequestInvalid(f"{where}: unknown field(s) {', '.join(unknown)}")
    missing = sorted(set(required) - set(obj))
    if missing:
        raise RequestInvalid(f"{where}: missing required field(s) {', '.join(missing)}")
    return obj


def check_type(value: Any, where: str, *types: type) -> Any:
    if isinstance(value, bool) and bool not in types:
        raise RequestInvalid(f"{where}: expected {'/'.join(t.__name__ for t in types)}, got bool")
    if not isinstance(value, types):
        names = "/".join(t.__name__ for t in types)
        raise RequestInvalid(f"{where}: expected {names}, got {type(value).__name__}")
    return value


def check_range(value: Any, where: str, lo: float | None, hi: float | None) -> None:
    check_type(value, where, int, float)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise RequestInvalid(f"{where}: {value} is out of range [{lo}, {hi}]")


def apply_stops(text: str, stops: list[str] | None) -> tuple[str, str | None]:
    """Cut ``text`` at the first stop sequence; return the text and the matched stop."""
    best: tuple[int, str] | None = None
    for stop in stops or []:
        idx = text.find(stop)
        if idx >= 0 and (best is None or idx < best[0]):
            best = (idx, stop)
    if best is None:
        return text, None
    return text[: best[0]], best[1]


def truncate_words(text: str, max_tokens: int | None) -> tuple[str, bool]:
    """Pretend each whitespace-separated word is one token; cut at ``max_tokens``."""
    words = text.split(" ")
    if max_tokens is None or len(words) <= max_tokens:
        return text, False
    return " ".join(words[:max_tokens]), True


@dataclass
class Exchange:
    """What a fake understood of one generation request, handed to its responder."""

    system: str | None
    turns: list[tuple[str, str]]  # (role, text) in the provider's own role names
    images: int
    schema: dict | None = None
    tools: list[dict] | None = None


Responder = Callable[[Exchange], str]


def default_responder(ex: Exchange) -> str:
    """A deterministic reply that shows what reached the server."""
    if ex.schema is not None:
        return json.dumps(sample_from_schema(ex.schema))
    last = ex.turns[-1][1] if ex.turns else ""
    return f"system={ex.system or '-'} | turns={len(ex.turns)} | images={ex.images} | last={last}"


def sample_from_schema(schema: dict) -> Any:
    """A small value that satisfies ``schema`` (objects, arrays, enums, scalars)."""
    if "enum" in schema:
        return schema["enum"][0]
    if "anyOf" in schema:
        return sample_from_schema(schema["anyOf"][0])
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = kind[0]
    kind = str(kind).lower()
    if kind == "object":
        props = schema.get("properties", {})
        return {name: sample_from_schema(sub) for name, sub in props.items()}
    if kind == "array":
        return [sample_from_schema(schema.get("items", {"type": "string"}))]
    if kind == "integer":
        return 1
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "text"


def tiny_png(width: int = 2, height: int = 2, rgb: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A small valid PNG (solid colour), for image-input tests."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )
