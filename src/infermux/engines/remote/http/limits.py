"""Rate-limit hints and adaptive concurrency for the remote transport.

- :func:`retry_hint` is the one reader of how long a server asks us to wait, from every place a
  provider puts it: headers (:func:`parse_retry_hint`: ``retry-after-ms``, ``Retry-After`` in seconds
  or as an HTTP date, ``x-ratelimit-reset-*`` durations such as ``6m0s``, ``x-ratelimit-reset`` and
  ``ratelimit-reset`` as seconds or epoch times, Anthropic's ``anthropic-ratelimit-*-reset`` instants),
  then the error body (:func:`body_retry_hint`: Google's ``RetryInfo.retryDelay``, OpenRouter's
  ``error.metadata.headers`` with ``X-RateLimit-Reset`` in epoch milliseconds, ``retry_after`` fields,
  and "try again in 20s" in the message as OpenAI, Azure, Groq and Gemini write it).
- :class:`AimdLimiter` is the async semaphore whose size follows AIMD (additive increase,
  multiplicative decrease) and which keeps ``politeness`` seconds between uses of one slot.
- :class:`WindowLimiter` keeps a job under requests, input tokens and output tokens per minute
  (``remote_params.requests_per_minute`` and friends) over a sliding window; the limits a provider
  announces in its headers fill the budgets the user left unset
  (:mod:`~infermux.engines.remote.http.provider_limits`).
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import json
import os
import re
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AimdLimiter",
    "WindowLimiter",
    "body_retry_hint",
    "error_object",
    "estimate_tokens",
    "parse_duration_hint",
    "parse_retry_hint",
    "rate_window_s",
    "retry_hint",
]

_MAX_HINT_S = 600.0


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def _parse_duration(value: str) -> float | None:
    """Seconds in ``1s``, ``6m0s``, ``20ms``, ``1.5`` (plain seconds) or an epoch timestamp."""
    value = value.strip()
    try:
        number = float(value)
    except ValueError:
        parts = _DURATION.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value.replace(" ", ""):
            return None
        scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
        return sum(float(n) * scale[u] for n, u in parts)
    if number > 1e11:  # an absolute epoch time in milliseconds (OpenRouter's X-RateLimit-Reset)
        return number / 1000.0 - time.time()
    if number > 1e9:  # an absolute epoch time in seconds
        return number - time.time()
    return number


def _parse_instant(value: str) -> float | None:
    """Seconds until an RFC 3339 instant (``2026-01-01T00:00:05Z``), or None."""
    try:
        when = datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp() - time.time()


def parse_retry_hint(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asks us to wait, from ``retry-after-ms``, ``Retry-After`` (seconds or HTTP
    date) or ``x-ratelimit-reset-*`` (the exhausted limit's, else the soonest). None if no hint."""
    lower = {k.lower(): v for k, v in headers.items()}
    if "retry-after-ms" in lower:
        try:
            return _clamp(float(lower["retry-after-ms"]) / 1000.0)
        except ValueError:
            pass
    if "retry-after" in lower:
        raw = lower["retry-after"].strip()
        try:
            return _clamp(float(raw))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(raw)
            except (TypeError, ValueError, IndexError):
                when = None
            if when is not None:
                return _clamp(when.timestamp() - time.time())
    # x-ratelimit-reset-<limit> (OpenAI, Groq: durations), x-ratelimit-reset (OpenRouter: epoch ms; others
    # seconds), ratelimit-reset (the IETF draft: seconds), anthropic-ratelimit-<limit>-reset (instants)
    resets: dict[str, float] = {}
    for key, value in lower.items():
        name = None
        if key.startswith("x-ratelimit-reset"):
            name = key.removeprefix("x-ratelimit-reset").lstrip("-")
            seconds = _parse_duration(value)
        elif key == "ratelimit-reset":
            name, seconds = "", _parse_duration(value)
        elif key.startswith("anthropic-ratelimit-") and key.endswith("-reset"):
            name = key.removeprefix("anthropic-ratelimit-").removesuffix("-reset")
            seconds = _parse_instant(value)
        if name is not None and seconds is not None:
            resets[name] = seconds
    if not resets:
        return None
    exhausted = [resets[name] for name in resets if _remaining(lower, name) == "0"]
    return _clamp(max(exhausted) if exhausted else min(resets.values()))


def _remaining(lower: Mapping[str, str], name: str) -> str:
    """The ``remaining`` header of limit ``name`` (``""``: the header of the unnamed limit)."""
    keys = (f"x-ratelimit-remaining-{name}", f"anthropic-ratelimit-{name}-remaining") if name else (
        "x-ratelimit-remaining", "ratelimit-remaining")  # fmt: skip
    return next((lower[k].strip() for k in keys if k in lower), "")


def error_object(body: bytes) -> dict[str, Any]:
    """The provider's error object from an error body (``{}`` when there is none): OpenAI's and Google's
    ``{"error": {...}}``, Anthropic's ``{"type": "error", "error": {...}}``, Vertex's one-element list."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {}
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, dict):
        return {}
    error = data.get("error")
    return error if isinstance(error, dict) else {}


#: "Please try again in 6.5s", "try again in 1m30s", "Please retry after 20 seconds", "retry in 4.2s"
_MESSAGE_WAIT = re.compile(
    r"(?:try again|retry)(?: after| in)\s+"
    r"((?:\d+(?:\.\d+)?(?:ms|h|m|s))+(?![a-z])|\d+(?:\.\d+)?\s*(?:seconds?|secs?)\b)",
    re.I,
)


def body_retry_hint(body: bytes) -> float | None:
    """Seconds an error body asks us to wait, or None: Google's ``google.rpc.RetryInfo`` detail
    (``"retryDelay": "4s"``), the rate-limit headers OpenRouter copies into ``error.metadata.headers``,
    a ``retry_after``/``retry_after_seconds`` field, or a wait written in the message."""
    error = error_object(body)
    if not error:
        return None
    details = error.get("details")
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = detail.get("retryDelay")
            if isinstance(delay, str):
                return parse_duration_hint(delay)
            if isinstance(delay, dict):  # the proto form {"seconds": 4, "nanos": 0}
                return _clamp(float(delay.get("seconds", 0)) + float(delay.get("nanos", 0)) / 1e9)
    metadata = error.get("metadata")
    if isinstance(metadata, dict):
        headers = metadata.get("headers")
        if isinstance(headers, dict):
            hint = parse_retry_hint({str(k): str(v) for k, v in headers.items()})
            if hint is not None:
                return hint
    for holder in (error, metadata if isinstance(metadata, dict) else {}):
        for key in ("retry_after", "retry_after_seconds", "retryAfter"):
            value = holder.get(key)
            if isinstance(value, (int, float, str)) and (seconds := _parse_duration(str(value))) is not None:
                return _clamp(seconds)
    match = _MESSAGE_WAIT.search(str(error.get("message") or ""))
    if match is not None:
        raw = re.sub(r"\s*(seconds?|secs?)$", "s", match.group(1).strip(), flags=re.I)
        return parse_duration_hint(raw.replace(" ", ""))
    return None


def retry_hint(headers: Mapping[str, str], body: bytes = b"") -> float | None:
    """Seconds a failed reply asks us to wait before trying again, from its headers, else its body."""
    hint = parse_retry_hint(headers)
    return hint if hint is not None else body_retry_hint(body)


def parse_duration_hint(value: str) -> float | None:
    """Seconds in a duration such as ``4s``, ``1.5s``, ``250ms`` or ``6m0s`` (clamped), or None."""
    seconds = _parse_duration(value)
    return None if seconds is None else _clamp(seconds)


def _clamp(seconds: float) -> float:
    return min(max(seconds, 0.0), _MAX_HINT_S)


class AimdLimiter:
    """An async semaphore whose size moves: additive increase, multiplicative decrease.

    Starts at ``maximum`` (a clean job never runs below what was asked for). Each success adds
    ``1/limit`` (one slot per window of successes); an overload signal halves the limit, at most
    once per ``cooldown_s``, never below ``minimum``. With ``adaptive=False`` it is a plain
    semaphore of ``maximum`` slots.
    """

    def __init__(
        self, maximum: int, *, adaptive: bool = True, minimum: int = 1, cooldown_s: float = 0.5, politeness: float = 0.0
    ):
        self.maximum = max(1, maximum)
        self.minimum = max(1, min(minimum, self.maximum))
        self.adaptive = adaptive
        self.cooldown_s = cooldown_s
        self.politeness = politeness
        self.limit = float(self.maximum)
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._last_decrease = -1e9

    def __repr__(self) -> str:
        return f"AimdLimiter(limit={self.limit:.1f}, in_flight={self.in_flight}, max={self.maximum})"

    def try_acquire(self) -> bool:
        """Take a slot if one is free right now (the common case, without a coroutine)."""
        if self.in_flight < int(self.limit) and not self._waiters:
            self.in_flight += 1
            return True
        return False

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release_now()  # the slot was handed over just as we were cancelled
            else:
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        """Give a slot back; with ``politeness`` it becomes usable again only that many seconds later."""
        if self.politeness > 0:
            asyncio.get_running_loop().call_later(self.politeness, self.release_now)
        else:
            self.release_now()

    def release_now(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < int(self.limit):
            fut = self._waiters.popleft()
            if not fut.done():
                self.in_flight += 1
                fut.set_result(None)

    def on_success(self) -> None:
        if self.adaptive and self.limit < self.maximum:
            self.limit = min(float(self.maximum), self.limit + 1.0 / self.limit)
            self._wake()

    def on_overload(self) -> None:
        if not self.adaptive:
            return
        now = time.monotonic()
        if now - self._last_decrease >= self.cooldown_s:
            self._last_decrease = now
            self.limit = max(float(self.minimum), self.limit / 2.0)


def rate_window_s() -> float:
    """The length of a "minute" for the per-minute limits: 60 s, or ``$INFERMUX_RATE_WINDOW_S`` (tests
    compress the window with it; a shorter window scales every limit down with it)."""
    raw = os.environ.get("INFERMUX_RATE_WINDOW_S")
    try:
        return max(0.01, float(raw)) if raw else 60.0
    except ValueError:
        return 60.0


def estimate_tokens(text_chars: int) -> int:
    """The documented estimate of a prompt's tokens before sending: one token per 4 characters (at least 1)."""
    return max(1, (text_chars + 3) // 4)


@dataclass(eq=False)
class _Use:
    at: float
    input: int
    output: int
    raw_input: int  # the unscaled estimate, for the reported/estimated ratio
    live: bool = True  # still counted in the window sums


class WindowLimiter:
    """Requests, input tokens, output tokens (and both together, ``tokens``) per ``window`` seconds, over
    a sliding window, job-wide. The budgets may change while a job runs (the provider's announced limits
    fill them: :mod:`~infermux.engines.remote.http.provider_limits`).

    :meth:`acquire` waits until one more request (with its estimated tokens) fits in the last window and
    returns its record; :meth:`settle` replaces the estimate by what the reply reported. The ratio of
    reported to estimated prompt tokens so far scales later estimates, and the average completion seen
    replaces ``max_new_tokens`` as the output reservation (:meth:`expected_output`).
    A request bigger than a whole window's budget is let through alone, once the window is empty.
    """

    def __init__(
        self,
        *,
        requests: int | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        window: float | None = None,
        tokens: int | None = None,
    ) -> None:
        self.requests = requests
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.tokens = tokens  # prompt and completion together (OpenAI's announced tokens per minute)
        self.window = window if window is not None else rate_window_s()
        self._uses: deque[_Use] = deque()
        self._sum_in = 0
        self._sum_out = 0
        self._estimated = 0  # prompt tokens estimated for settled requests
        self._reported = 0  # prompt tokens the server reported for them
        self._completions = 0
        self._completion_tokens = 0
        self.waited_s = 0.0

    @property
    def active(self) -> bool:
        # Read twice per request: plain tests, no generator.
        return (
            self.requests is not None
            or self.input_tokens is not None
            or self.output_tokens is not None
            or self.tokens is not None
        )

    def scaled_input(self, estimate: int) -> int:
        """A prompt's raw token estimate corrected by what the server reported so far."""
        return self._scale_input(estimate)

    def _scale_input(self, estimate: int) -> int:
        """``estimate`` corrected by the reported/estimated ratio seen so far."""
        if self._estimated <= 0 or self._reported <= 0:
            return estimate
        return max(1, round(estimate * self._reported / self._estimated))

    def expected_output(self, max_new_tokens: int) -> int:
        """Completion tokens to reserve: ``max_new_tokens`` until replies report usage, then their mean."""
        if self._completions == 0:
            return max_new_tokens
        return max(1, min(max_new_tokens, round(self._completion_tokens / self._completions)))

    def _purge(self, now: float) -> None:
        horizon = now - self.window
        while self._uses and self._uses[0].at <= horizon:
            use = self._uses.popleft()
            use.live = False
            self._sum_in -= use.input
            self._sum_out -= use.output

    def _fits(self, input_tokens: int, output_tokens: int) -> bool:
        if not self._uses:
            return True
        if self.requests is not None and len(self._uses) + 1 > self.requests:
            return False
        if self.input_tokens is not None and self._sum_in + input_tokens > self.input_tokens:
            return False
        if self.tokens is not None and self._sum_in + self._sum_out + input_tokens + output_tokens > self.tokens:
            return False
        return self.output_tokens is None or self._sum_out + output_tokens <= self.output_tokens

    async def acquire(self, estimated_input: int = 0, max_output: int = 0) -> _Use:
        """Wait until a request of ``estimated_input`` prompt tokens (the raw estimate) and at most
        ``max_output`` completion tokens fits; record it (started now) and return its record."""
        started = time.monotonic()
        while True:
            now = time.monotonic()
            self._purge(now)
            input_tokens = self._scale_input(estimated_input)
            output_tokens = self.expected_output(max_output) if max_output else 0
            if self._fits(input_tokens, output_tokens):
                use = _Use(now, input_tokens, output_tokens, estimated_input)
                self._uses.append(use)
                self._sum_in += input_tokens
                self._sum_out += output_tokens
                self.waited_s += now - started
                return use
            # the oldest record leaves the window first; look again then
            await asyncio.sleep(max(0.001, self._uses[0].at + self.window - now))

    def settle(self, use: _Use, input_tokens: int | None, output_tokens: int | None) -> None:
        """Replace ``use``'s estimates by the reported usage (None: keep the estimate)."""
        if input_tokens is not None:
            self._estimated += use.raw_input
            self._reported += input_tokens
            if use.live:
                self._sum_in += input_tokens - use.input
            use.input = input_tokens
        if output_tokens is not None:
            self._completions += 1
            self._completion_tokens += output_tokens
            if use.live:
                self._sum_out += output_tokens - use.output
            use.output = output_tokens
