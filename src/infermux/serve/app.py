"""The aiohttp application: OpenAI routes over one infermux engine, metrics, health and the chat page.

Each chat request runs as its own task and calls ``engine.stream`` (engines that batch, like LLAMACPP's
multi-sequence decoder, NATIVE's stream scheduler and VLLM's running engine, join concurrent calls between
steps; local engines without streaming go through a :class:`~infermux.serve.batcher.Batcher`). Requests
for ``n`` answers or log-probabilities get them from the final answer's samples: when streamed, each
choice arrives whole, in one chunk carrying its index (and its log-probabilities). The engine's session is
opened once for the server's life, so a remote engine keeps one transport: its retries, ``Retry-After``
handling and adaptive concurrency apply across all clients. A client that disconnects cancels its
request's task, which stops its generation. Every request passes :mod:`.guard` first (its size, shape and
arrival time; ``Host``, ``Origin`` and CORS for browsers; the key), and the work that grows with it runs
off the event loop. With a batch folder, the server also speaks OpenAI's Files and Batch APIs
(:mod:`.batch_api`): each batch runs as a job in the background, behind the interactive requests
(:mod:`.priority`), and goes on after a restart (:mod:`.batch_runner`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from infermux.configs.generation_params import GenerationParams
from infermux.engines.base import InferenceEngine, StreamEvent
from infermux.errors import ErrorKind, InfermuxError, InputError, RemoteError, RowError
from infermux.serve import answers, wire
from infermux.serve.batch_api import add_routes as add_batch_routes
from infermux.serve.batcher import Batcher, needs_batcher
from infermux.serve.guard import (
    Limits,
    browser_guard,
    check_request,
    cors_headers,
    parse_json,
    read_body,
    require_key,
)
from infermux.serve.metrics import CONTENT_TYPE, Metrics
from infermux.serve.priority import Priority
from infermux.serve.wire import ApiError
from infermux.tracing import tracer

if TYPE_CHECKING:
    from infermux.serve.batch_runner import BatchRunner

__all__ = ["DEFAULT_MAX_BODY", "Limits", "ServerState", "create_app"]

logger = logging.getLogger("infermux.serve")

STATIC = Path(__file__).resolve().parent / "static"
DEFAULT_MAX_BODY = Limits.max_body
_LINGER = 2.0  # seconds a connection answered 408 stays open (aiohttp would read on for up to 10 s)
STATIC_FILES = frozenset(p.name for p in STATIC.iterdir() if p.is_file())
_INPUT_KINDS = frozenset({ErrorKind.INVALID_INPUT, ErrorKind.UNSUPPORTED_INPUT})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ServerState:
    engine: InferenceEngine
    served_model: str
    defaults: GenerationParams
    api_key: str | None = None
    limits: Limits = field(default_factory=Limits)
    #: Sampling settings for requests that choose none (serve without a config: the chat preset).
    preset: dict[str, float] = field(default_factory=dict)
    metrics: Metrics = field(init=False)
    batcher: Batcher | None = None
    #: Interactive requests waiting for their first token: batch rows wait for none to be.
    priority: Priority = field(default_factory=Priority)
    #: The Batch API's batches (``--batch-dir``), or None.
    batches: BatchRunner | None = None
    secrets: tuple[str, ...] = ()
    #: The engine's session, held from start-up to clean-up.
    session: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack, repr=False)

    def __post_init__(self) -> None:
        self.metrics = Metrics(self.served_model, self.engine.label)
        self.secrets = tuple(s for s in (*getattr(self.engine, "secrets", ()), self.api_key) if s)

    def prepare(
        self, data: Any, defaults: GenerationParams | None = None, preset: dict[str, float] | None = None
    ) -> wire.Prepared:
        """A request body (parsed JSON) as a conversation and settings, checked as every row is before it runs:
        the server's limits, then the engine's own :meth:`~infermux.engines.base.InferenceEngine.check`
        against ``defaults`` (the server's, or those a batch was submitted under). Raises
        :class:`~infermux.serve.wire.ApiError` (an OpenAI-style 4xx) for what the engine cannot run."""
        check_request(data, self.limits)
        defaults = self.defaults if defaults is None else defaults
        check = functools.partial(self.engine.check, baseline=defaults)  # the one check before a row runs
        try:
            return wire.prepare(data, served_model=self.served_model, defaults=defaults, caps=self.engine.capabilities,
                                engine_name=self.engine.label, preset=self.preset if preset is None else preset,
                                check=check)  # fmt: skip
        except InfermuxError as exc:  # a value the provider rejects, a grammar that cannot compile
            raise _api_error(self, exc) from None

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if len(secret) >= 4:
                text = text.replace(secret, "***")
        return text


STATE: Any = web.AppKey("infermux_state", ServerState) if hasattr(web, "AppKey") else "infermux_state"


def create_app(
    engine: InferenceEngine,
    *,
    served_model: str,
    defaults: GenerationParams | None = None,
    api_key: str | None = None,
    max_body: int | None = None,
    preset: dict[str, float] | None = None,
    limits: Limits | None = None,
    allowed_hosts: Iterable[str] = (),
    cors_origins: Iterable[str] = (),
    batch_dir: str | Path | None = None,
    batch_concurrency: int = 4,
) -> web.Application:
    """The server's app. ``allowed_hosts``: names besides IP addresses and ``localhost`` that requests
    may be addressed to (``Host``); ``cors_origins``: web origins allowed to call it from a browser;
    ``preset``: sampling settings for requests that set none of temperature, top_p, frequency_penalty and
    presence_penalty (``infermux serve`` without a config gives the chat preset); ``batch_dir``: where the
    Batch API keeps its files and batches (None: no Batch API), ``batch_concurrency`` batch rows at once."""
    limits = limits or Limits()
    if max_body is not None:
        limits = dataclasses.replace(limits, max_body=max_body)
    state = ServerState(engine, served_model, defaults or engine.generation_params, api_key, limits, dict(preset or {}))
    hosts = frozenset(h.lower() for h in allowed_hosts)
    origins = frozenset(o.rstrip("/") for o in cors_origins)
    middlewares = [_errors, browser_guard(hosts, origins), require_key(api_key)]
    if (spans := tracer()) is not None:  # a server span per request, around the error answers too
        from infermux.serve.traces import traced_requests

        middlewares.insert(0, traced_requests(spans))
    app = web.Application(middlewares=middlewares, client_max_size=limits.max_body)
    app[STATE] = state
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{model:.+}", model_info)
    if batch_dir is not None:
        from infermux.serve.batch_runner import BatchRunner
        from infermux.serve.batch_store import Store

        state.batches = BatchRunner(state, Store(batch_dir), batch_concurrency)
    add_batch_routes(app)  # without a batch folder they say how to get one
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static)
    app.on_response_prepare.append(cors_headers(origins))
    app.on_startup.append(_start)
    app.on_cleanup.append(_stop)
    return app


async def _start(app: web.Application) -> None:
    state: ServerState = app[STATE]
    if needs_batcher(state.engine):
        state.batcher = Batcher(state.engine)
    # one session for the server's life (a remote engine keeps its transport)
    await state.session.enter_async_context(state.engine.session())
    if state.batches is not None:
        await state.batches.start()


async def _stop(app: web.Application) -> None:
    state: ServerState = app[STATE]
    if state.batches is not None:
        await state.batches.stop()
    if state.batcher is not None:
        await state.batcher.close()
    await state.session.aclose()


# ---------------------------------------------------------------------- middlewares


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    state: ServerState = request.app[STATE]
    try:
        return await handler(request)
    except ApiError as exc:
        error = exc
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status)
        message = f"{request.method} {request.path}: {exc.reason}."
        if exc.status == 413:
            message = f"The request body is larger than this server's limit of {request.app._client_max_size} bytes."
        error = ApiError(message, status=exc.status, code=code)
    except Exception as exc:  # a bug or an engine failure: the client gets a message, never a traceback
        logger.error("internal error on %s %s: %s", request.method, request.path, state.redact(repr(exc)))
        logger.debug("traceback", exc_info=True)
        error = ApiError("The server had an error while processing your request.", status=500, type="server_error")
    state.metrics.errors[str(error.status)] += 1
    response = web.json_response(error.body(), status=error.status, headers=error.headers)
    if error.headers.get("Connection") == "close":  # a body still arriving: the client gets a moment to read
        response.force_close()  # the answer, then the connection closes, however slowly the body trickles on
        asyncio.get_running_loop().call_later(_LINGER, request.protocol.force_close)
    return response


# ---------------------------------------------------------------------- simple routes


def _model_card(state: ServerState) -> dict[str, Any]:
    return {"id": state.served_model, "object": "model", "created": 0, "owned_by": "infermux"}


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [_model_card(request.app[STATE])]})


async def model_info(request: web.Request) -> web.Response:
    state: ServerState = request.app[STATE]
    if request.match_info["model"] != state.served_model:
        raise ApiError(f"The model `{request.match_info['model']}` does not exist.", status=404, code="model_not_found")
    return web.json_response(_model_card(state))


async def health(request: web.Request) -> web.Response:
    state: ServerState = request.app[STATE]
    sampling = {name: getattr(state.defaults, name) for name in wire.SAMPLING_FIELDS} | state.preset
    return web.json_response(
        {"status": "ok", "model": state.served_model, "engine": state.engine.label, "sampling": sampling}
    )


async def metrics(request: web.Request) -> web.Response:
    body = request.app[STATE].metrics.render()
    return web.Response(body=body.encode(), headers={"Content-Type": CONTENT_TYPE})


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def static(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    if name not in STATIC_FILES:  # only the page's own files: no path is ever built from the request
        raise ApiError(f"GET {request.path}: there is no such file.", status=404, code="not_found")
    return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})


# ---------------------------------------------------------------------- chat completions


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state: ServerState = request.app[STATE]
    body = await read_body(request, state.limits)
    prepared = await asyncio.to_thread(_prepare, state, body)  # work that grows with the request: off the loop
    state.metrics.requests["stream" if prepared.stream else "non_stream"] += 1
    run = _Run(state, prepared)
    try:
        if prepared.stream:
            return await run.stream(request)  # counts its own disconnects (noticed on a write, too)
        try:
            return await run.whole()
        except asyncio.CancelledError:
            state.metrics.errors["499"] += 1  # the client went away before its answer: generation stopped
            raise
    finally:
        run.finish()


def _prepare(state: ServerState, body: bytes) -> wire.Prepared:
    return state.prepare(parse_json(body))


class _Run:
    """One request from acceptance to its last byte, keeping the metrics' gauges right."""

    def __init__(self, state: ServerState, prepared: wire.Prepared) -> None:
        self.state = state
        self.prepared = prepared
        self.cid = answers.new_id()
        self.created = answers.now()
        self.start = time.monotonic()
        self.first: float | None = None
        self.generating = False
        self.tokens_streamed = False  # the answer went out token by token, with its log-probabilities
        state.metrics.queued += 1
        state.priority.arrived()

    def _started(self) -> None:
        if self.first is None:
            self.first = time.monotonic()
            self.state.metrics.ttft.observe(self.first - self.start)
            self.state.metrics.queued -= 1
            self.state.priority.served()
            self.state.metrics.in_flight += 1
            self.generating = True

    def finish(self) -> None:
        metrics = self.state.metrics
        logger.info(
            "chat %s %s: %.2fs, first token %s",
            self.cid,
            "stream" if self.prepared.stream else "whole",
            time.monotonic() - self.start,
            f"{self.first - self.start:.2f}s" if self.first is not None else "-",
        )
        if self.first is None:
            metrics.queued -= 1
            self.state.priority.served()
        self.state.priority.finished()
        if self.generating:
            metrics.in_flight -= 1
            self.generating = False
            metrics.latency.observe(time.monotonic() - self.start)

    def _count(self, final: StreamEvent) -> None:
        usage = final.usage
        if usage is not None:
            self.state.metrics.prompt_tokens += usage.prompt_tokens or 0
            self.state.metrics.completion_tokens += usage.completion_tokens or 0

    async def events(self) -> AsyncIterator[StreamEvent]:
        """The engine's events, with engine failures turned into :class:`ApiError`."""
        conversation, generation = self.prepared.conversation, self.prepared.generation
        try:
            if self.state.batcher is not None:
                result = await self.state.batcher.answer(conversation, generation)
                if isinstance(result, RowError):
                    raise self._row_error(result)
                self._started()
                yield StreamEvent(delta=result.last_message.text)
                yield StreamEvent(conversation=result, metadata=dict(result.metadata))
                return
            stream = self.state.engine.stream(conversation, generation)
            async with contextlib.aclosing(stream):  # type: ignore[type-var]
                async for event in stream:
                    self._started()
                    yield event
        except InfermuxError as exc:
            raise self._api_error(exc) from None

    def _row_error(self, error: RowError) -> ApiError:
        message = self.state.redact(error.message)
        logger.warning("request failed (%s): %s", error.kind, message)
        if error.kind in _INPUT_KINDS:
            return ApiError(message, status=400, code=error.kind)
        return ApiError(f"The engine failed on this request: {message}", status=500, type="server_error")

    def _api_error(self, exc: InfermuxError) -> ApiError:
        return _api_error(self.state, exc)

    async def whole(self) -> web.Response:
        text: list[str] = []
        final: StreamEvent | None = None
        async for event in self.events():
            if event.final:
                final = event
            else:
                text.append(event.delta)
        assert final is not None and final.conversation is not None
        self._count(final)
        reply = final.conversation.last_message.text if final.conversation else "".join(text)
        model = self.state.served_model
        calls = answers.tool_calls_of(final.conversation.last_message if final.conversation else None)
        return web.json_response(answers.completion(self.cid, model, self.created, reply, final.metadata, calls))

    async def stream(self, request: web.Request) -> web.StreamResponse:
        events = self.events()
        response: web.StreamResponse | None = None
        try:
            async with contextlib.aclosing(events):  # type: ignore[type-var]
                async for event in events:
                    if response is None:  # headers go out with the first event: earlier errors get a status
                        response = web.StreamResponse(
                            headers={
                                "Content-Type": "text/event-stream",
                                "Cache-Control": "no-cache",
                                "X-Accel-Buffering": "no",
                            }
                        )
                        await response.prepare(request)
                        if not self.prepared.samples:
                            await self._send(response, {"role": "assistant", "content": ""})
                    if event.final:
                        await self._finish_stream(response, event)
                    elif event.delta and not self.prepared.samples:  # samples: each choice whole, at the end
                        await self._send(response, {"content": event.delta})
                    elif event.logprobs is not None and self.prepared.generation.n == 1:
                        await self._send_tokens(response, event)  # an engine that streams log-probabilities
        except ApiError as exc:
            if response is None:
                raise
            self.state.metrics.errors[str(exc.status)] += 1
            await _write(response, exc.body())
        except asyncio.CancelledError:
            self.state.metrics.errors["499"] += 1  # the client went away: its generation was stopped
            raise
        except ConnectionResetError:  # noticed on a write: leaving the ``async with`` stopped the generation
            self.state.metrics.errors["499"] += 1
            assert response is not None
            return response
        except Exception as exc:
            if response is None:
                raise
            logger.error("internal error while streaming: %s", self.state.redact(repr(exc)))
            error = ApiError("The server had an error while processing your request.", status=500, type="server_error")
            self.state.metrics.errors["500"] += 1
            await _write(response, error.body())
        assert response is not None
        await response.write_eof()
        return response

    async def _send(self, response: web.StreamResponse, delta: dict[str, Any]) -> None:
        inc = self.prepared.include_usage
        await _write(response, answers.chunk(self.cid, self.state.served_model, self.created, delta, include_usage=inc))

    async def _send_tokens(self, response: web.StreamResponse, event: StreamEvent) -> None:
        """Text with the log-probabilities of the tokens behind it, in one chunk (OpenAI's streamed shape)."""
        delta: dict[str, Any] = {"content": event.delta}
        if not self.tokens_streamed:
            delta = {"role": "assistant", **delta}
            self.tokens_streamed = True
        logprobs = answers.logprobs_of(event.logprobs or [])
        await _write(response, answers.chunk(self.cid, self.state.served_model, self.created, delta,
                                          include_usage=self.prepared.include_usage, logprobs=logprobs))  # fmt: skip

    async def _finish_stream(self, response: web.StreamResponse, final: StreamEvent) -> None:
        self._count(final)
        model, inc = self.state.served_model, self.prepared.include_usage
        message = final.conversation.last_message if final.conversation else None
        choices = answers.choices_of(message.text if message else "", final.metadata, answers.tool_calls_of(message))
        if not self.prepared.samples:
            choices = choices[:1]
        for index, choice in enumerate(choices):
            if self.prepared.samples and not self.tokens_streamed:  # the choice's text, whole, with its logprobs
                delta: dict[str, Any] = {"role": "assistant", "content": choice.text}
                await _write(response, answers.chunk(self.cid, model, self.created, delta, include_usage=inc,
                                                  index=index, logprobs=choice.logprobs))  # fmt: skip
            if choice.tool_calls:  # the calls go out whole, in one delta, before the finish chunk
                delta = {"tool_calls": [{"index": i, **call} for i, call in enumerate(choice.tool_calls)]}
                part = answers.chunk(self.cid, model, self.created, delta, include_usage=inc, index=index)
                await _write(response, part)
        for index, choice in enumerate(choices):
            reason = choice.finish_reason
            finish = answers.chunk(self.cid, model, self.created, {}, reason, include_usage=inc, index=index)
            await _write(response, finish)
        if inc:
            usage = answers.usage_of(final.metadata)
            await _write(response, answers.chunk(self.cid, model, self.created, None, usage=usage, include_usage=True))
        await response.write(b"data: [DONE]\n\n")


async def _write(response: web.StreamResponse, data: dict[str, Any]) -> None:
    await response.write(b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n")


def _api_error(state: ServerState, exc: InfermuxError) -> ApiError:
    """An engine's or upstream's failure as the client's error."""
    message = state.redact(str(exc))
    if isinstance(exc, RemoteError):
        logger.warning("upstream error (%s): %s", exc.status or exc.kind, message)
        if exc.status == 429 or exc.kind == ErrorKind.RATE_LIMITED:
            return ApiError(message, status=429, type="rate_limit_error", code="rate_limit_exceeded")
        if exc.status in (400, 404, 413, 422):
            return ApiError(message, status=400, code="upstream_rejected")
        if exc.kind in _INPUT_KINDS:
            return ApiError(message, status=400, code=exc.kind)
        return ApiError(f"The upstream server failed: {message}", status=502, type="server_error")
    if isinstance(exc, InputError):
        return ApiError(message, status=400, code="invalid_input")
    return ApiError(message, status=400)
