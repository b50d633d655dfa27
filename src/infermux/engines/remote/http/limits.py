"""Rate-limit hints and adaptive concurrency for the remote transport.

- :func:`parse_retry_hint` reads how long a server asks us to wait (``Retry-After`` in seconds or as
  an HTTP date, ``retry-after-ms``, ``x-ratelimit-reset-*`` durations such as ``6m0s``).
- :class:`AimdLimiter` is the async semaphore whose size follows AIMD (additive increase,
  multiplicative decrease) and which keeps ``politeness`` seconds between uses of one slot.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import time
from collections import deque
from collections.abc import Mapping

__all__ = ["AimdLimiter", "parse_duration_hint", "parse_retry_hint"]

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
    if number > 1e9:  # an absolute epoch time
        return number - time.time()
    return number


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
    resets = {k.removeprefix("x-ratelimit-reset-"): v for k, v in lower.items() if k.startswith("x-ratelimit-reset")}
    if not resets:
        return None
    exhausted = [resets[name] for name in resets if lower.get(f"x-ratelimit-remaining-{name}", "").strip() == "0"]
    parsed = [d for d in (_parse_duration(v) for v in (exhausted or resets.values())) if d is not None]
    if not parsed:
        return None
    return _clamp(max(parsed) if exhausted else min(parsed))


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
