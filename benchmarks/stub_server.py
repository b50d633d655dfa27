"""A fast local OpenAI-compatible chat-completions server for benchmarks and tests.

It answers ``POST /v1/chat/completions`` (and ``/chat/completions``) after a configurable latency with
``"echo: <last user text>"``, so a client's output can be checked row by row; a request offering
``tools`` (``tool_choice`` not ``none``) gets a call of its first tool instead, with arguments
``{"text": <last user text>}`` and an id derived from that text (the same whatever order requests come
in). Optional fault injection (429 with Retry-After, 500, 503, dropped connections, truncated JSON) is
decided per request from a seed, the request body and how many times that body was seen: the same seed
gives the same faults whatever order concurrent requests arrive in.

Server-side conditions for routing and fallback tests: ``--max-concurrency N`` answers at most N
requests at once (the rest queue, as a GPU server's batch is full); ``--quota-exhausted`` answers every
valid request 429 with OpenAI's ``insufficient_quota`` error; ``--reject-text TEXT`` answers 400
(``invalid_request_error``) to a request whose last user text contains TEXT.

Side routes for harnesses: ``GET /v1/models``; ``GET /_stub/stats`` (request count, most requests in
flight at once, time of the first request, faults injected); ``GET /_stub/log`` (the last user text of
every valid request, in arrival order, faulted ones included); ``GET /_stub/requests`` (path, headers
and body of captured requests, with ``--capture``); ``POST /_stub/reset``.

Run it as a process (prints ``READY <base url>`` on stdout once listening)::

    python benchmarks/stub_server.py --port 0 --latency-ms 50 --fault-rate 0.2 --seed 1

or from Python with :func:`spawn` (a context manager yielding the base URL).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web

FAULT_KINDS = ("429", "500", "503", "drop", "truncate")
#: Also accepted by ``--faults``, never a default: a permanent client error (400), which must not be retried.
EXTRA_FAULT_KINDS = ("400",)


class StubState:
    """Counters and configuration shared by the handlers."""

    def __init__(
        self,
        *,
        latency_s: float,
        fault_rate: float,
        faults: tuple[str, ...],
        seed: int,
        retry_after: str,
        capture: bool,
        reasoning: bool,
        max_faults_per_body: int,
        require_key: str = "",
        max_concurrency: int = 0,
        quota_exhausted: bool = False,
        reject_text: str = "",
    ) -> None:
        self.require_key = require_key
        self.slots = asyncio.Semaphore(max_concurrency) if max_concurrency > 0 else None
        self.quota_exhausted = quota_exhausted
        self.reject_text = reject_text
        self.latency_s = latency_s
        self.fault_rate = fault_rate
        self.faults = faults
        self.seed = seed
        self.retry_after = retry_after
        self.capture = capture
        self.reasoning = reasoning
        self.max_faults_per_body = max_faults_per_body
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.completed = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.first_request_at: float | None = None
        self.seen: dict[str, int] = {}
        self.faults_injected: dict[str, int] = {}
        self.log: list[str] = []
        self.captured: list[dict[str, Any]] = []

    def pick_fault(self, body: bytes) -> str | None:
        """The fault for this request (or None), a pure function of seed, body and repeat count."""
        if self.fault_rate <= 0.0:
            return None
        key = hashlib.blake2b(body, digest_size=8).hexdigest()
        nth = self.seen.get(key, 0)
        self.seen[key] = nth + 1
        if nth >= self.max_faults_per_body:
            return None
        rng = random.Random(f"{self.seed}:{key}:{nth}")
        if rng.random() >= self.fault_rate:
            return None
        return rng.choice(self.faults)


def _last_user_text(payload: dict[str, Any]) -> str:
    for message in reversed(payload.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "\n".join(p.get("text", "") for p in content if p.get("type") == "text")
    return ""


def _completion(payload: dict[str, Any], text: str, n: int, reasoning: bool) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": f"echo: {text}"}
    finish = "stop"
    tools = payload.get("tools")
    if tools and payload.get("tool_choice") != "none":
        call_id = "call_" + hashlib.sha1(text.encode()).hexdigest()[:12]
        function = {"name": tools[0]["function"]["name"], "arguments": json.dumps({"text": text})}
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": call_id, "type": "function", "function": function}],
        }
        finish = "tool_calls"
    if reasoning:
        message["reasoning_content"] = f"thinking about: {text}"
    prompt_tokens = max(1, len(text.split()))
    completion_tokens = prompt_tokens + 1
    return {
        "id": f"chatcmpl-stub-{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": payload.get("model", "stub"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = json.dumps({"error": {"message": message, "type": "stub_fault", "code": status}})
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


_QUOTA_MESSAGE = "You exceeded your current quota, please check your plan and billing details."


def _invalid(status: int, kind: str, code: str | None, message: str) -> web.Response:
    """An error as OpenAI writes it: ``{"error": {"message", "type", "param", "code"}}``."""
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})
    return web.Response(status=status, text=body, content_type="application/json")


def make_app(state: StubState) -> web.Application:
    """The aiohttp application serving the stub routes from ``state``."""

    async def chat(request: web.Request) -> web.StreamResponse:
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            if state.slots is None:
                return await _chat(request)
            async with state.slots:
                return await _chat(request)
        finally:
            state.in_flight -= 1

    async def _chat(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        state.requests += 1
        if state.first_request_at is None:
            state.first_request_at = time.time()
        if state.capture:
            state.captured.append(
                {
                    "method": request.method,
                    "path": request.path,
                    "query": request.query_string,
                    "headers": dict(request.headers),
                    "body": body.decode("utf-8", "replace"),
                }
            )
        try:
            payload = json.loads(body)
        except ValueError:
            return _error(400, "request body is not valid JSON")
        if not isinstance(payload, dict) or not isinstance(payload.get("messages"), list):
            return _error(400, "'messages' is required and must be a list")
        if state.require_key and request.headers.get("Authorization") != f"Bearer {state.require_key}":
            got = request.headers.get("Authorization", "").removeprefix("Bearer ")
            return _error(401, f"Incorrect API key provided: {got}")  # echoes the key, as real APIs do
        text = _last_user_text(payload)
        state.log.append(text)
        if state.reject_text and state.reject_text in text:
            return _invalid(400, "invalid_request_error", None, f"rejected (stub): contains {state.reject_text!r}")
        if state.quota_exhausted:
            return _invalid(429, "insufficient_quota", "insufficient_quota", _QUOTA_MESSAGE)
        fault = state.pick_fault(body)
        if state.latency_s > 0:
            await asyncio.sleep(state.latency_s)
        if fault is not None:
            state.faults_injected[fault] = state.faults_injected.get(fault, 0) + 1
            if fault == "429":
                return _error(429, "rate limited (stub)", {"Retry-After": state.retry_after})
            if fault in ("400", "500", "503"):
                return _error(int(fault), f"injected {fault} (stub)")
            if fault == "drop":
                if request.transport is not None:
                    request.transport.close()
                return web.Response(status=500)  # never reaches the client: the socket is closed
        state.completed += 1
        data = json.dumps(_completion(payload, text, state.completed, state.reasoning))
        if fault == "truncate":
            data = data[: len(data) // 2]
        return web.Response(text=data, content_type="application/json")

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "stub", "object": "model"}]})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "requests": state.requests,
                "completed": state.completed,
                "max_in_flight": state.max_in_flight,
                "first_request_at": state.first_request_at,
                "faults": state.faults_injected,
            }
        )

    async def log(request: web.Request) -> web.Response:
        return web.json_response(state.log)

    async def captured(request: web.Request) -> web.Response:
        return web.json_response(state.captured)

    async def reset(request: web.Request) -> web.Response:
        state.reset()
        return web.json_response({"ok": True})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    for path in ("/v1/chat/completions", "/chat/completions"):
        app.router.add_post(path, chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/_stub/stats", stats)
    app.router.add_get("/_stub/log", log)
    app.router.add_get("/_stub/requests", captured)
    app.router.add_post("/_stub/reset", reset)
    return app


async def _serve(state: StubState, host: str, port: int) -> None:
    runner = web.AppRunner(make_app(state), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
    await site.start()
    bound = runner.addresses[0][1]
    print(f"READY http://{host}:{bound}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--fault-rate", type=float, default=0.0, help="share of requests faulted (0-1)")
    p.add_argument("--faults", default=",".join(FAULT_KINDS), help="comma list of fault kinds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retry-after", default="0", help="Retry-After header sent with 429s")
    p.add_argument("--max-faults-per-body", type=int, default=1_000_000)
    p.add_argument("--capture", action="store_true", help="keep every request for /_stub/requests")
    p.add_argument("--reasoning", action="store_true", help="add reasoning_content to replies")
    p.add_argument("--require-key", default="", help="answer 401 unless 'Authorization: Bearer KEY'")
    p.add_argument("--max-concurrency", type=int, default=0, help="answer at most N requests at once (0: any)")
    p.add_argument("--quota-exhausted", action="store_true", help="answer 429 insufficient_quota to every request")
    p.add_argument("--reject-text", default="", help="answer 400 to requests whose user text contains this")
    args = p.parse_args(argv)
    unknown = set(args.faults.split(",")) - set(FAULT_KINDS) - set(EXTRA_FAULT_KINDS)
    if unknown:
        p.error(f"unknown fault kinds {sorted(unknown)}; choose from {', '.join(FAULT_KINDS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)  # injected drops are not news
    state = StubState(
        latency_s=args.latency_ms / 1000.0,
        fault_rate=args.fault_rate,
        faults=tuple(args.faults.split(",")),
        seed=args.seed,
        retry_after=args.retry_after,
        capture=args.capture,
        reasoning=args.reasoning,
        max_faults_per_body=args.max_faults_per_body,
        require_key=args.require_key,
        max_concurrency=args.max_concurrency,
        quota_exhausted=args.quota_exhausted,
        reject_text=args.reject_text,
    )
    with contextlib.suppress(ImportError):
        import uvloop  # the server is shared by every client measured, so it may be as fast as it likes

        uvloop.install()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(state, args.host, args.port))


@contextlib.contextmanager
def spawn(*args: str, python: str = sys.executable) -> Iterator[str]:
    """Run the stub server in a child process with command-line ``args``; yield its base URL."""
    proc = subprocess.Popen([python, __file__, *args], stdout=subprocess.PIPE, text=True, bufsize=1)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"stub server did not start (said {line!r})")
        yield line.split()[1]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
