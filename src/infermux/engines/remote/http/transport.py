"""The HTTP transport every remote engine shares: pooled aiohttp, retries, AIMD, politeness, redaction.

The seam
--------
A protocol adapter (OpenAI chat completions, Anthropic messages, Gemini, ...) never touches HTTP.
It supplies four things, and the transport does the rest:

* the **URL** of the request,
* the **headers** (auth, versions: built once, reused for every row),
* a **body builder**: row → JSON-able dict (turned into bytes once, reused across retries),
* a **response parser**: decoded JSON → the adapter's result. A parser that raises ``ValueError``,
  ``KeyError``, ``TypeError`` or ``IndexError`` marks the body as unparsable, which is retried.

Those travel as an :class:`HttpRequest` plus a ``parse`` callable into :meth:`Transport.send`, which
returns the parsed result or raises :class:`~infermux.errors.RemoteError` once retries are spent.
Rows are fed by the batch loop (one ``send`` per row, ``num_workers`` at a time; see
:class:`infermux.engines.remote.base.RemoteEngine`). Adapters may also pass ``error_message`` to pull
the human message out of their provider's error bodies.

What the transport guarantees
-----------------------------
* One pooled ``aiohttp.ClientSession`` per job; the connection limit equals ``num_workers``.
* Retries on 408, 409, 429, 5xx, connection errors, timeouts and unparsable bodies, with exponential
  back-off and full jitter (``retry_backoff_base`` doubling up to ``retry_backoff_max``), up to
  ``max_retries``. No retry on other 4xx: the row fails with the server's message.
* Never a retry for what cannot succeed: billing, quota and spend-limit errors (OpenAI answers them
  429), context-length errors (see :mod:`~infermux.engines.remote.http.classify`) fail the row at
  once with the provider's message and advice.
* Rate limits (429, or 503 with a hint) wait as long as the reply asks, read in one place
  (:func:`~infermux.engines.remote.http.limits.retry_hint`: ``Retry-After``, ``retry-after-ms``, the
  ``x-ratelimit-reset*`` family, Google's ``RetryInfo.retryDelay`` and OpenRouter's reset in the body, ...);
  they pause every worker, not just one, and they are retried for up to ``rate_limit_budget_s``
  seconds (``remote_params.rate_limit_timeout``) without using up ``max_retries``, so a minute-long
  429 storm loses nothing.
* AIMD concurrency (``use_adaptive_concurrency``): starts at ``num_workers``, halves on overload
  signals (at most once per cool-down), creeps back by one slot per window of successes.
* ``politeness_policy``: seconds between consecutive requests of one concurrency slot (a slot that
  finishes a request becomes usable again only that long after; results are not held back).
* ``requests_per_minute``, ``input_tokens_per_minute``, ``output_tokens_per_minute``: a sliding-window
  limiter (:class:`~infermux.engines.remote.http.limits.WindowLimiter`) shared by every worker of the
  job, checked before a concurrency slot is taken; every attempt (retries too) counts as a request.
  Callers pass each request's estimated tokens to :meth:`Transport.send` and how to read the reported
  usage from the result, which corrects the estimate.
* Limits the provider announces (``x-ratelimit-*`` and ``anthropic-ratelimit-*`` reply headers) pace
  the job below them before a 429 happens, also when the user set no per-minute limits; the user's
  settings win (:mod:`~infermux.engines.remote.http.provider_limits`; ``use_provider_limits: false``
  turns it off).
* Secrets (API keys) are scrubbed from every error message and never part of any repr.
* Traces (:mod:`infermux.tracing`, when on): each attempt is a client span (method, host, port, path,
  status, ``http.request.resend_count``; never the query string or a header), and each retry and wait is
  an event on the current span (the row's): ``infermux.retry``, ``infermux.wait``.

In-process handler (tests)
--------------------------
``Transport(settings, handler=fn)`` sends nothing over a socket: each attempt calls ``fn(request)``
(an :class:`HttpRequest`), which returns an :class:`HttpResponse` (or an awaitable of one) with the
status, the headers and the body as bytes or as an async iterable of chunks (a streamed reply). Raising
``ConnectionError`` or ``asyncio.TimeoutError`` in it is a dropped connection or a timeout. Everything
above the socket is the same: retries, back-off, rate-limit pauses, AIMD, per-minute limits, error
classification, redaction and SSE decoding; ``connection_timeout`` bounds a reply (and, streamed, each
chunk). Like httpx's ``MockTransport``, it is for tests of remote behaviour that do not need real HTTP.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import os
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import aiohttp

from infermux.engines.remote.http.classify import permanent_failure
from infermux.engines.remote.http.codec import decode_json, encode_json
from infermux.engines.remote.http.limits import AimdLimiter, WindowLimiter, parse_retry_hint, retry_hint
from infermux.engines.remote.http.provider_limits import ProviderLimits
from infermux.engines.remote.http.spans import event, status_attribute, traced_attempt
from infermux.engines.remote.http.sse import WHOLE_REPLY, SseEvent, iter_lines, iter_sse
from infermux.errors import AuthenticationError, RemoteError
from infermux.tracing import tracer

if TYPE_CHECKING:
    from infermux.configs.remote_params import RemoteParams

__all__ = [
    "AimdLimiter",
    "Handler",
    "HttpRequest",
    "HttpResponse",
    "Transport",
    "TransportSettings",
    "json_object",
    "parse_retry_hint",
    "redact",
]

logger = logging.getLogger("infermux.remote")

T = TypeVar("T")

RETRY_STATUSES = frozenset({408, 409, 425, 429})
_PARSE_ERRORS = (ValueError, KeyError, TypeError, IndexError)
_CONNECTION_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError)
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
# aiohttp's limits, set here rather than left to the installed version's defaults: the read buffer, and
# the longest status or header line and header field of a reply (long request ids and signed headers
# happen). Streamed bodies are split into lines by :func:`iter_lines`, with its own limit.
_SESSION_LIMITS: dict[str, Any] = {"read_bufsize": 2**18, "max_line_size": 65536, "max_field_size": 65536}


@dataclass(frozen=True)
class TransportSettings:
    """How hard to push and how long to persist. Built from ``RemoteParams`` by the engines."""

    num_workers: int = 1
    max_retries: int = 3
    connection_timeout: float = 20.0
    politeness_policy: float = 0.0
    use_adaptive_concurrency: bool = True
    retry_backoff_base: float = 1.0
    retry_backoff_max: float = 30.0
    rate_limit_budget_s: float = 300.0
    """How long one request keeps waiting out rate limits before it fails (``rate_limit_timeout``)."""
    requests_per_minute: int | None = None
    input_tokens_per_minute: int | None = None
    output_tokens_per_minute: int | None = None
    fail_fast: bool = False
    """Give a transient failure (5xx, dropped connection, timeout) back at once, unretried: an endpoint
    pool (:mod:`~infermux.engines.remote.http.endpoints`) retries it at another server. Rate limits
    are still waited out here."""
    use_provider_limits: bool = True
    """Pace below the limits the provider announces in its reply headers (``use_provider_limits``)."""

    @classmethod
    def from_remote_params(cls, params: RemoteParams, **overrides: Any) -> TransportSettings:
        """Settings from a ``RemoteParams`` (its throughput and retry fields), then ``overrides``."""
        values: dict[str, Any] = {
            "num_workers": params.num_workers,
            "max_retries": params.max_retries,
            "connection_timeout": params.connection_timeout,
            "politeness_policy": params.politeness_policy,
            "use_adaptive_concurrency": params.use_adaptive_concurrency,
            "retry_backoff_base": params.retry_backoff_base,
            "retry_backoff_max": params.retry_backoff_max,
            "rate_limit_budget_s": params.rate_limit_timeout,
            "requests_per_minute": params.requests_per_minute,
            "input_tokens_per_minute": params.input_tokens_per_minute,
            "output_tokens_per_minute": params.output_tokens_per_minute,
            "use_provider_limits": params.use_provider_limits,
        }
        values.update(overrides)
        return cls(**values)


@dataclass(slots=True)
class HttpRequest:
    """One call as a protocol adapter describes it. ``headers`` may carry secrets: never printed.

    Treat it as immutable (``dataclasses.replace`` for a variant); not frozen only because a frozen
    dataclass's constructor costs three times as much, and one is built for every row."""

    url: str
    body: bytes
    headers: Mapping[str, str] = field(repr=False, default_factory=dict)
    method: str = "POST"

    @classmethod
    def json(cls, url: str, payload: Any, headers: Mapping[str, str]) -> HttpRequest:
        return cls(url, encode_json(payload), headers)


@dataclass(frozen=True)
class HttpResponse:
    """What an in-process :data:`Handler` answers: the body as bytes, or as an async iterable of chunks."""

    status: int = 200
    body: bytes | AsyncIterable[bytes] = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> HttpResponse:
        return cls(status, encode_json(payload), {"Content-Type": "application/json", **(headers or {})})


#: An in-process stand-in for the server (see "In-process handler" above).
Handler = Callable[[HttpRequest], "HttpResponse | Awaitable[HttpResponse]"]


def json_object(data: Any) -> dict[str, Any]:
    """A ``parse`` for :meth:`Transport.send` that accepts a JSON object (a dict) and nothing else."""
    if not isinstance(data, dict):
        raise TypeError(f"expected a JSON object, got {type(data).__name__}")
    return data


async def _read_all(body: bytes | AsyncIterable[bytes]) -> bytes:
    if isinstance(body, bytes | bytearray):
        return bytes(body)
    return b"".join([chunk async for chunk in body])


async def _lines(body: bytes | AsyncIterable[bytes], timeout: float) -> AsyncIterator[bytes]:
    """A handler's body as lines (what aiohttp's ``response.content`` yields), each chunk within ``timeout``."""
    if isinstance(body, bytes | bytearray):
        for line in bytes(body).splitlines(keepends=True):
            yield line
        return
    chunks = aiter(body)
    buffer = b""
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(anext(chunks), timeout)
            except StopAsyncIteration:
                break
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for line in complete:
                yield line + b"\n"
        if buffer:
            yield buffer
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each non-trivial secret replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4 and secret in text:
            text = text.replace(secret, "***")
    return text


class _Attempt(Exception):
    """One failed attempt: what happened, whether to retry, and how long the server asked to wait."""

    def __init__(
        self, kind: str, message: str, *, status: int | None = None, retry: bool,
        hint: float | None = None, rate_limited: bool = False, overload: bool = True,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry = retry
        self.hint = hint
        self.rate_limited = rate_limited
        self.overload = overload


def _sentence(message: str, advice: str) -> str:
    """``message`` followed by ``advice`` as a new sentence."""
    if not advice:
        return message
    return f"{message}{' ' if message.rstrip().endswith(('.', '!', '?')) else '. '}{advice}"


def default_error_message(status: int, body: bytes) -> str:
    """The server's own message from an OpenAI-style ``{"error": {"message": ...}}`` body, or its text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:500] or f"HTTP {status}"
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            for key in ("message", "detail", "msg"):
                if isinstance(err.get(key), str):
                    return err[key]
        elif isinstance(err, str):
            return err
        if isinstance(data.get("detail"), str):
            return str(data["detail"])
    return text[:500]


class Transport(Generic[T]):
    """A job's HTTP client. Use as ``async with Transport(settings, secrets=[key]) as t: ...``."""

    def __init__(
        self,
        settings: TransportSettings,
        *,
        secrets: Iterable[str] = (),
        auth_hint: str = "",
        error_message: Callable[[int, bytes], str] = default_error_message,
        handler: Handler | None = None,
    ) -> None:
        self.settings = settings
        self._handler = handler
        self._secrets = tuple(s for s in secrets if s)
        self._auth_hint = auth_hint
        self._error_message = error_message
        self.limiter = AimdLimiter(
            settings.num_workers, adaptive=settings.use_adaptive_concurrency, politeness=settings.politeness_policy
        )
        self.window = WindowLimiter(
            requests=settings.requests_per_minute,
            input_tokens=settings.input_tokens_per_minute,
            output_tokens=settings.output_tokens_per_minute,
        )
        #: Whether per-minute limits are set (read per request; set again when the provider announces its own).
        self.per_minute_limits = self.window.active
        self._window = self.window if self.per_minute_limits else None
        user_set = frozenset(
            name
            for name in ("requests_per_minute", "input_tokens_per_minute", "output_tokens_per_minute")
            if getattr(settings, name) is not None
        )
        #: The limits the provider announces (None: not read); they gate requests once one is announced.
        self.provider_limits = (
            ProviderLimits(self.window, user_set, lambda: self.limiter.in_flight)
            if settings.use_provider_limits
            else None
        )
        self._provider: ProviderLimits | None = None
        self._session: aiohttp.ClientSession | None = None
        self._resume_at = 0.0  # monotonic time before which no request starts (shared rate-limit pause)
        self._rate_streak = 0  # rate-limited replies since the last success
        self.stats = {"requests": 0, "ok": 0, "retries": 0, "rate_limited": 0}
        self._tracer = tracer()  # None: tracing is off

    def __repr__(self) -> str:
        return f"Transport(workers={self.settings.num_workers}, limiter={self.limiter!r})"

    async def __aenter__(self) -> Transport[T]:
        if self._handler is not None:  # in process: no connections to open
            return self
        connector = aiohttp.TCPConnector(
            limit=self.settings.num_workers, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=30
        )
        timeout = aiohttp.ClientTimeout(total=self.settings.connection_timeout)
        # trust_env makes aiohttp look up proxy settings on every request: only pay for it when set.
        trust_env = any(os.environ.get(v) for v in _PROXY_VARS)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, raise_for_status=False, trust_env=trust_env, **_SESSION_LIMITS
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------ one request, with retries

    async def send(
        self,
        request: HttpRequest,
        parse: Callable[[Any], T],
        *,
        raw: bool = False,
        tokens: tuple[int, int] = (0, 0),
        usage: Callable[[T], tuple[int | None, int | None]] | None = None,
    ) -> T:
        """Send ``request`` until it succeeds and ``parse`` accepts the JSON reply, or retries run out.

        With ``raw=True`` ``parse`` gets the body bytes instead of decoded JSON (file downloads).
        ``tokens`` is the request's (estimated prompt tokens, max completion tokens) for the per-minute
        limits, and ``usage`` reads (prompt, completion) tokens from the result to correct them."""
        failures = 0
        started = time.monotonic()
        ok_before = self.stats["ok"]
        limiter = self.limiter
        attempts = 0
        while True:
            if self._resume_at:
                await self._wait_rate_pause()
            if self._provider is not None:
                waited = await self._provider.acquire(tokens)
                if waited and self._tracer is not None:
                    event("infermux.wait", {"infermux.wait.reason": "provider_limits", "infermux.wait.s": waited})
            window = self._window
            if window is None:
                use = None
            elif self._tracer is None:
                use = await window.acquire(*tokens)
            else:
                asked = time.monotonic()
                use = await window.acquire(*tokens)
                if (waited := time.monotonic() - asked) > 0.001:
                    event("infermux.wait", {"infermux.wait.reason": "per_minute_limits", "infermux.wait.s": waited})
            if not limiter.try_acquire():
                await limiter.acquire()
            try:
                if self._tracer is None:
                    result = await self._attempt(request, parse, raw)
                else:
                    attempt_once = functools.partial(self._attempt, request, parse, raw)
                    result = await traced_attempt(self._tracer, request.method, request.url, attempts, attempt_once)
            except _Attempt as attempt:
                attempts += 1
                limiter.release()
                failures = await self._after_failure(attempt, failures, started, ok_before)
                continue
            except BaseException:  # cancelled, or a bug in ``parse``: give the slot back before leaving
                limiter.release_now()
                raise
            limiter.release()
            limiter.on_success()
            self.stats["ok"] += 1
            if self._rate_streak:
                self._rate_streak = 0
            if use is not None and window is not None and usage is not None:
                window.settle(use, *usage(result))
            return result

    async def _after_failure(self, attempt: _Attempt, failures: int, started: float, ok_before: int) -> int:
        """Wait before the next try and return the new failure count; raise when there is none.

        A transient failure (5xx, dropped connection, timeout, unparsable reply) is retried
        ``max_retries`` times; when those run out while other requests of the job succeeded in the
        meantime, the faults are scattered rather than an outage and the request gets one more round
        of ``max_retries`` (back-off restarted). A request that fails alone or during an outage gives
        up after the first round, as configured."""
        if attempt.overload:
            self.limiter.on_overload()
        waited = time.monotonic() - started
        if attempt.rate_limited:
            self.stats["rate_limited"] += 1
            self._rate_streak += 1
            if not attempt.retry or waited > self.settings.rate_limit_budget_s:
                raise self._final(attempt, failures, waited) from None
        else:
            failures += 1
            m = self.settings.max_retries
            # A second round (m + 1 more attempts) only while the job's other requests succeed.
            allowed = 2 * m + 1 if self.stats["ok"] > ok_before else m
            if self.settings.fail_fast:
                allowed = 0
            if not attempt.retry or failures > allowed:
                raise self._final(attempt, failures, waited) from None
        self.stats["retries"] += 1
        m = self.settings.max_retries
        delay = self._delay(attempt, failures if failures <= m else failures - m)
        if self._tracer is not None:
            retry: dict[str, Any] = {"error.type": attempt.kind, "infermux.retry.delay_s": delay}
            if attempt.status is not None:
                retry["http.response.status_code"] = attempt.status
            event("infermux.retry", retry)
        await asyncio.sleep(delay)
        return failures

    async def stream(self, request: HttpRequest, *, tokens: tuple[int, int] = (0, 0)) -> AsyncIterator[SseEvent]:
        """Send ``request`` and yield the server-sent events of the reply as they arrive.

        Failures before the reply starts are retried like :meth:`send`; once events flow, a broken
        stream raises :class:`RemoteError` (what was already shown cannot be taken back). The read
        timeout applies between chunks, not to the whole answer. Closing the iterator early closes the
        connection, which tells the server to stop generating. A server that ignores the stream flag and
        answers with one JSON document gives one event named :data:`~.sse.WHOLE_REPLY` holding it.
        """
        assert self._session is not None or self._handler is not None, "use the transport inside `async with`"
        failures = 0
        started = time.monotonic()
        ok_before = self.stats["ok"]
        ct = self.settings.connection_timeout
        resp: aiohttp.ClientResponse | None = None
        lines: AsyncIterable[bytes]
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=ct, sock_read=ct)
        while True:
            await self._wait_rate_pause()
            if self._provider is not None:
                await self._provider.acquire(tokens)
            if self.window.active:
                await self.window.acquire(*tokens)
            await self.limiter.acquire()
            self.stats["requests"] += 1
            try:
                if self._handler is not None:
                    lines = await self._open_handled(request)
                else:
                    assert self._session is not None
                    resp = await self._session.request(
                        request.method, request.url, data=request.body, headers=request.headers, timeout=timeout
                    )
                    if self.provider_limits is not None:
                        self._observe(resp.headers)
                    if resp.status >= 400:
                        body = await resp.read()
                        resp.release()
                        raise self._status_failure(resp.status, body, resp.headers)
                    lines = iter_lines(resp.content.iter_any())
            except (asyncio.TimeoutError, *_CONNECTION_ERRORS) as exc:
                self.limiter.release()
                attempt = _Attempt("connection_error", f"{type(exc).__name__}: {exc}", retry=True)
                failures = await self._after_failure(attempt, failures, started, ok_before)
                continue
            except _Attempt as attempt:
                self.limiter.release()
                failures = await self._after_failure(attempt, failures, started, ok_before)
                continue
            break
        finished = False
        try:
            if resp is not None and (resp.content_type == "application/json" or resp.content_type.endswith("+json")):
                yield SseEvent((await resp.read()).decode("utf-8", "replace"), WHOLE_REPLY)
            else:
                async for event in iter_sse(lines):
                    yield event
            finished = True
            self.limiter.on_success()
            self.stats["ok"] += 1
        except (asyncio.TimeoutError, *_CONNECTION_ERRORS) as exc:
            raise RemoteError(
                f"the answer stream broke off ({type(exc).__name__}: {exc})", retryable=True, kind="connection_error"
            ) from None
        except ValueError as exc:  # a line longer than iter_lines reads
            raise RemoteError(f"unreadable answer stream: {exc}", kind="malformed_response") from None
        finally:
            self.limiter.release()
            if resp is None:
                await lines.aclose()  # type: ignore[attr-defined]
            elif finished:
                resp.release()
            else:
                resp.close()

    async def _attempt(self, request: HttpRequest, parse: Callable[[Any], T], raw: bool = False) -> T:
        self.stats["requests"] += 1
        headers: Mapping[str, str]
        try:
            if self._handler is not None:
                status, headers, body = await self._handled(request)
            else:
                assert self._session is not None, "use the transport inside `async with`"
                async with self._session.request(
                    request.method, request.url, data=request.body, headers=request.headers
                ) as resp:
                    body = await resp.read()
                    status = resp.status
                    headers = resp.headers
        except asyncio.TimeoutError:
            raise _Attempt(
                "timeout", f"no reply within connection_timeout={self.settings.connection_timeout}s",
                retry=True,
            ) from None  # fmt: skip
        except _CONNECTION_ERRORS as exc:
            raise _Attempt("connection_error", f"{type(exc).__name__}: {exc}", retry=True) from None
        if self.provider_limits is not None:
            self._observe(headers)
        if self._tracer is not None:
            status_attribute(status)
        if status >= 400:
            raise self._status_failure(status, body, headers)
        try:
            return parse(body if raw else decode_json(body))
        except _PARSE_ERRORS as exc:
            snippet = body[:200].decode("utf-8", "replace")
            raise _Attempt(
                "malformed_response", f"unparsable reply ({type(exc).__name__}: {exc}): {snippet!r}",
                status=status, retry=True, overload=False,
            ) from None  # fmt: skip

    async def _respond(self, request: HttpRequest) -> HttpResponse:
        assert self._handler is not None
        response = self._handler(request)
        if inspect.isawaitable(response):
            response = await response
        return response

    async def _handled(self, request: HttpRequest) -> tuple[int, Mapping[str, str], bytes]:
        """One exchange with the in-process handler, within ``connection_timeout`` (as a socket's total)."""

        async def exchange() -> tuple[int, Mapping[str, str], bytes]:
            response = await self._respond(request)
            return response.status, response.headers, await _read_all(response.body)

        return await asyncio.wait_for(exchange(), self.settings.connection_timeout)

    async def _open_handled(self, request: HttpRequest) -> AsyncIterator[bytes]:
        """A streamed exchange with the handler: its body as lines, or the failure of its status."""
        timeout = self.settings.connection_timeout
        response = await asyncio.wait_for(self._respond(request), timeout)
        if self.provider_limits is not None:
            self._observe(response.headers)
        if response.status >= 400:
            body = await asyncio.wait_for(_read_all(response.body), timeout)
            raise self._status_failure(response.status, body, response.headers)
        return _lines(response.body, timeout)

    def _observe(self, headers: Mapping[str, str]) -> None:
        """Read the provider's announced limits from a reply; once there are some, requests wait for them."""
        limits = self.provider_limits
        assert limits is not None
        limits.observe(headers)
        if limits.active and self._provider is None:
            self._provider = limits
            self._window = self.window
            self.per_minute_limits = True

    def _status_failure(self, status: int, body: bytes, headers: Mapping[str, str]) -> _Attempt:
        message = f"HTTP {status}: {self._error_message(status, body)}"
        verdict = permanent_failure(status, body)
        if verdict is not None:  # e.g. a quota answered 429: waiting never helps
            return _Attempt(
                verdict.kind, _sentence(message, verdict.advice), status=status, retry=False, overload=False
            )
        hint = retry_hint(headers, body)
        if status == 429 or (status == 503 and hint is not None):
            return _Attempt("rate_limited", message, status=status, retry=True, hint=hint, rate_limited=True)
        if status in (401, 403):
            if self._auth_hint:
                message += f". {self._auth_hint}"
            return _Attempt("authentication", message, status=status, retry=False, overload=False)
        retry = status >= 500 or status in RETRY_STATUSES
        kind = "http_error" if retry else "invalid_request"
        return _Attempt(kind, message, status=status, retry=retry, hint=hint, overload=retry)

    def _delay(self, attempt: _Attempt, failures: int) -> float:
        s = self.settings
        if attempt.hint is not None:
            delay = attempt.hint + random.uniform(0.0, 0.1 * attempt.hint + 0.01)
        elif attempt.rate_limited:
            # No hint: back off on the job's run of rate limits (every worker feeds it, any success
            # resets it), never to near zero, so a storm is met with growing, shared pauses.
            exponent = min(self._rate_streak, 11) - 1
            delay = min(s.retry_backoff_max, s.retry_backoff_base * (2.0**exponent)) * random.uniform(0.5, 1.0)
        else:
            exponent = max(failures, 1) - 1
            return random.uniform(0.0, min(s.retry_backoff_max, s.retry_backoff_base * (2.0**exponent)))
        if attempt.rate_limited:
            self._resume_at = max(self._resume_at, time.monotonic() + delay)
        return delay

    async def _wait_rate_pause(self) -> None:
        delay = self._resume_at - time.monotonic()
        if delay > 0:
            if self._tracer is not None:
                event("infermux.wait", {"infermux.wait.reason": "rate_limited", "infermux.wait.s": delay})
            await asyncio.sleep(delay)

    def _final(self, attempt: _Attempt, failures: int, waited: float) -> RemoteError:
        message = redact(str(attempt), self._secrets)
        if attempt.retry:
            message += f" (gave up after {failures} failed attempts and {waited:.1f}s)"
        cls = AuthenticationError if attempt.kind == "authentication" else RemoteError
        return cls(message, status=attempt.status, retryable=attempt.retry, kind=attempt.kind)
