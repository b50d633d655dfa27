"""Rate limits the provider announces in its reply headers, and the pace that keeps a job under them.

OpenAI and the providers that copy its headers (Groq, Together, Azure, OpenRouter, ...) send, on every
reply, ``x-ratelimit-limit-<what>``, ``x-ratelimit-remaining-<what>`` and ``x-ratelimit-reset-<what>``
for ``requests`` and ``tokens``; the reset is a duration (``6m0s``, ``1s``, ``20ms``). Anthropic sends
``anthropic-ratelimit-<what>-limit|remaining|reset`` for ``requests``, ``tokens``, ``input-tokens`` and
``output-tokens``; the reset is an RFC 3339 instant. Both count per minute, and a reset is when the
limit is whole again.

:class:`ProviderLimits` reads them (:meth:`ProviderLimits.observe`, called by the transport for every
reply, 429s included) and does two things with them, for every limit the user did not set in
``remote_params`` (the user's ``requests_per_minute`` and friends win):

* **pace**: the announced limit becomes the job's per-minute budget in the transport's
  :class:`~infermux.engines.remote.http.limits.WindowLimiter` (at :data:`SHARE` of it: replies report
  the state of a moment ago, and another client of the same key may be sending too);
* **gate**: :meth:`ProviderLimits.acquire` keeps a running estimate of what is left (the last reply's
  ``remaining``, less the requests in flight and those started since) and, when it is spent, waits
  until the announced reset instead of sending a request the provider would answer with 429. This
  also covers the budget that other jobs on the same key use up.

A server that sends none of these headers (vLLM, SGLang, llama.cpp) costs one dictionary lookup per
reply and nothing per request.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy

from infermux.engines.remote.http.limits import WindowLimiter, _parse_duration, _parse_instant

__all__ = ["SHARE", "ProviderLimits", "read_limit_headers"]

#: The share of an announced limit the job paces itself to.
SHARE = 0.9

#: Budget name → (OpenAI header suffix, Anthropic header infix). ``tokens`` is OpenAI's combined
#: prompt + completion budget; Anthropic's ``tokens`` is the tighter of its input and output budgets,
#: read only when those two are absent.
_NAMES: dict[str, tuple[str | None, str]] = {
    "requests": ("requests", "requests"),
    "tokens": ("tokens", "tokens"),
    "input_tokens": (None, "input-tokens"),
    "output_tokens": (None, "output-tokens"),
}
#: Budget name → the ``remote_params`` setting that overrides it.
_USER_SETTING = {
    "requests": "requests_per_minute",
    "tokens": "input_tokens_per_minute",
    "input_tokens": "input_tokens_per_minute",
    "output_tokens": "output_tokens_per_minute",
}
_PROBES = ("x-ratelimit-limit-requests", "x-ratelimit-limit-tokens", "anthropic-ratelimit-requests-limit",
           "anthropic-ratelimit-tokens-limit", "anthropic-ratelimit-input-tokens-limit")  # fmt: skip


@dataclass(frozen=True)
class Announced:
    """One budget as a reply announced it: ``limit`` per minute, ``remaining`` now, whole again in
    ``reset_s`` seconds (None: not said)."""

    limit: int
    remaining: int | None
    reset_s: float | None


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = int(float(value.strip()))
    except ValueError:
        return None
    return number if number >= 0 else None  # Azure sends -1 for "no limit reported"


def read_limit_headers(headers: Mapping[str, str]) -> dict[str, Announced]:
    """The budgets a reply's headers announce, by name (``requests``, ``tokens``, ``input_tokens``,
    ``output_tokens``); empty when it announces none. Header names are matched case-insensitively."""
    if not isinstance(headers, (CIMultiDictProxy, CIMultiDict)):  # a tuple: faster than a union here
        headers = CIMultiDict(headers)
    for probe in _PROBES:  # a loop, not any(): this runs for every reply
        if probe in headers:
            break
    else:
        return {}
    found: dict[str, Announced] = {}
    for name, (openai, anthropic) in _NAMES.items():
        limit = None
        if openai is not None:
            limit = _int(headers.get(f"x-ratelimit-limit-{openai}"))
            if limit is not None:
                remaining = _int(headers.get(f"x-ratelimit-remaining-{openai}"))
                reset = headers.get(f"x-ratelimit-reset-{openai}")
                reset_s = _parse_duration(reset) if reset else None
        if limit is None:
            limit = _int(headers.get(f"anthropic-ratelimit-{anthropic}-limit"))
            if limit is None:
                continue
            remaining = _int(headers.get(f"anthropic-ratelimit-{anthropic}-remaining"))
            reset = headers.get(f"anthropic-ratelimit-{anthropic}-reset")
            reset_s = _parse_instant(reset) if reset else None
        if limit > 0:
            found[name] = Announced(limit, remaining, None if reset_s is None else max(0.0, reset_s))
    if ("input_tokens" in found or "output_tokens" in found) and "anthropic-ratelimit-tokens-limit" in headers:
        found.pop("tokens", None)
    return found


@dataclass
class _Budget:
    limit: int
    left: float  # what we believe is left now
    reset_at: float  # monotonic instant the provider said the budget is whole again


class ProviderLimits:
    """Paces a job under the limits its provider announces (see the module docstring).

    ``window`` is the transport's per-minute limiter (the announced limits fill the budgets it has
    none for); ``user_set`` names the ``remote_params`` limits the user set (those budgets are left
    alone); ``in_flight`` tells how many requests are on their way (they may not be counted yet in a
    reply's ``remaining``).
    """

    def __init__(self, window: WindowLimiter, user_set: frozenset[str], in_flight: Callable[[], int]) -> None:
        self.window = window
        self._skip = frozenset(name for name, setting in _USER_SETTING.items() if setting in user_set)
        if "input_tokens_per_minute" in user_set or "output_tokens_per_minute" in user_set:
            self._skip |= {"tokens"}
        self._in_flight = in_flight
        self.budgets: dict[str, _Budget] = {}
        #: Whether any token budget is announced (requests then carry token estimates).
        self.counts_tokens = False
        self.waited_s = 0.0

    @property
    def active(self) -> bool:
        return bool(self.budgets)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Take in a reply's rate-limit headers (called while the reply's own request is still in flight)."""
        announced = read_limit_headers(headers)
        if not announced:
            return
        now = time.monotonic()
        pending = max(0, self._in_flight() - 1)
        for name, info in announced.items():
            if name in self._skip:
                continue
            reset_at = now + (info.reset_s if info.reset_s is not None else self.window.window)
            left = float(info.limit if info.remaining is None else info.remaining) - pending
            budget = self.budgets.get(name)
            if budget is None:
                self.budgets[name] = _Budget(info.limit, left, reset_at)
                self._pace(name, info.limit)
            else:
                if now >= budget.reset_at:  # a new period: believe the reply
                    budget.left = left
                else:  # replies come back out of order: the lowest report of a period stands
                    budget.left = min(budget.left, left)
                budget.reset_at = reset_at
                if info.limit != budget.limit:
                    budget.limit = info.limit
                    self._pace(name, info.limit)

    def _pace(self, name: str, limit: int) -> None:
        share = max(1, math.floor(limit * SHARE))
        if name == "requests":
            self.window.requests = share
        elif name == "input_tokens":
            self.window.input_tokens = share
        elif name == "output_tokens":
            self.window.output_tokens = share
        else:
            self.window.tokens = share
        if name != "requests":
            self.counts_tokens = True

    def _need(self, name: str, tokens: tuple[int, int]) -> float:
        if name == "requests":
            return 1.0
        estimated_input, max_output = tokens
        output = self.window.expected_output(max_output) if max_output else 0
        if name == "output_tokens":
            return float(output)
        estimated = self.window.scaled_input(estimated_input) if estimated_input else 0
        return float(estimated if name == "input_tokens" else estimated + output)

    async def acquire(self, tokens: tuple[int, int] = (0, 0)) -> float:
        """Wait until the budgets the provider announced have room for one more request of ``tokens``
        (estimated prompt tokens, most completion tokens), then count it against them; return the
        seconds waited."""
        started = time.monotonic()
        slept = False
        while True:
            now = time.monotonic()
            wait_until = 0.0
            for name, budget in self.budgets.items():
                need = self._need(name, tokens)
                if now >= budget.reset_at:
                    # Whole again: all of it, less what is on its way, until a reply says more.
                    budget.left = float(budget.limit) - self._in_flight()
                    budget.reset_at = now + self.window.window
                if budget.left < need and budget.left < budget.limit and now < budget.reset_at:
                    wait_until = max(wait_until, budget.reset_at)
            if not wait_until:
                break
            slept = True
            await asyncio.sleep(wait_until - now + 0.01)
        for name, budget in self.budgets.items():
            budget.left -= self._need(name, tokens)
        if not slept:
            return 0.0
        waited = time.monotonic() - started
        self.waited_s += waited
        return waited
