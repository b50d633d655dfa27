"""What answers cost, in US dollars, from the maintained price tables of ``genai-prices``.

infermux keeps no price table of its own: prices change every month and a stale table is worse than
none. :func:`pricing_for` maps an engine to the provider id ``genai-prices`` uses and looks the model up
once; an engine that runs locally, or a model the library does not know, has no pricing (``None``), and
costs are then reported as unknown, never guessed.

Token counts follow :class:`infermux.types.Usage` (``prompt_tokens`` includes cached prompt tokens;
``cached_tokens`` and ``cache_creation_tokens`` are priced at the provider's cache read and write rates).
Batch prices (OpenAI's Batch API, Anthropic's Message Batches) come from the same tables (their
``processing: batch`` variant).

Service tiers (``generation.service_tier``): a row is priced at the tier that answered it (the reply's
``service_tier``, in ``metadata["service_tier"]``), else at the tier asked for. The tables' own tier
prices are used where they have them (OpenAI's ``flex`` and ``priority`` for most models); without
them, OpenAI's ``flex`` is half the standard price (as OpenAI prices it), and any other tier
(``priority``, whose premium differs per model: 1.7x to 2x) is unknown, never guessed. ``auto``,
``default``, ``standard`` and ``standard_only`` are the standard price.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from infermux.types import Conversation, Usage

__all__ = ["PRICE_PROVIDERS", "CostTotals", "Pricing", "price_answer", "pricing_for"]

logger = logging.getLogger("infermux.cost")

#: Engine name → provider id in ``genai-prices``. Engines not listed (local engines, REMOTE, REMOTE_VLLM,
#: SGLANG, ...) run on the user's own hardware or an unknown server: no price.
PRICE_PROVIDERS: dict[str, str] = {
    "OPENAI": "openai",
    "ANTHROPIC": "anthropic",
    "GOOGLE_GEMINI": "google",
    "GEMINI": "google",
    "GOOGLE_VERTEX": "google",
    "BEDROCK": "aws",
    "TOGETHER": "together",
    "DEEPSEEK": "deepseek",
    "FIREWORKS": "fireworks",
    "OPENROUTER": "openrouter",
    "CEREBRAS": "cerebras",
}

_BATCH = {"processing": "batch"}
#: The batch discount a provider documents where genai-prices has no batch price for it (Bedrock's batch
#: inference: 50% of the on-demand price on the models it runs in batches).
_BATCH_FACTOR: dict[str, float] = {"aws": 0.5}
#: Model-name prefixes an engine accepts that genai-prices does not (Vertex's ``google/gemini-...``).
_PREFIXES: dict[str, tuple[str, ...]] = {"GOOGLE_VERTEX": ("publishers/google/models/", "google/")}
#: Tiers billed at the standard price.
STANDARD_TIERS = frozenset({"auto", "default", "standard", "standard_only", "on_demand"})


@dataclass(frozen=True)
class Pricing:
    """The price of one model at one provider; :meth:`cost` prices a usage record."""

    provider_id: str
    model: str
    tier: str | None = None
    """The ``service_tier`` asked for (None: the standard price)."""

    def cost(
        self, usage: Usage | Mapping[str, Any] | None, *, batch: bool = False, tier: str | None = None
    ) -> float | None:
        """Dollars for ``usage`` (a row's :attr:`~infermux.types.Conversation.usage`, or a usage dict as
        stored in its metadata) at ``tier`` (the one that answered; None: the one asked for); None when
        unknown: no usage, or a prompt or completion count missing (an absent count is unknown, never
        free). Reasoning tokens are part of ``completion_tokens``."""
        if usage is not None and not isinstance(usage, Usage):
            usage = Usage.from_json_dict(dict(usage)) if usage else None
        if usage is None or usage.prompt_tokens is None or usage.completion_tokens is None:
            return None
        return self._price(
            usage.prompt_tokens,
            usage.completion_tokens,
            cached=usage.cached_tokens or 0,
            created=usage.cache_creation_tokens or 0,
            batch=batch,
            tier=tier,
        )

    def estimate(self, prompt_tokens: int, completion_tokens: int, *, batch: bool = False) -> float | None:
        """Dollars for a request of that many prompt and completion tokens (no cache), at the tier asked for."""
        return self._price(prompt_tokens, completion_tokens, batch=batch)

    def _price(
        self,
        prompt: int,
        completion: int,
        *,
        cached: int = 0,
        created: int = 0,
        batch: bool = False,
        tier: str | None = None,
    ) -> float | None:
        from genai_prices import Usage, calc_price

        usage = Usage(
            input_tokens=prompt,
            output_tokens=completion,
            cache_read_tokens=cached or None,
            cache_write_tokens=created or None,
        )
        try:
            context = _BATCH if batch else None
            result = calc_price(usage, self.model, provider_id=self.provider_id, price_context=context)
            tier = None if batch else (tier or self.tier)
            if tier is None or tier in STANDARD_TIERS:
                price = float(result.total_price)
                if batch and self.provider_id in _BATCH_FACTOR:
                    online = float(calc_price(usage, self.model, provider_id=self.provider_id).total_price)
                    if price == online:  # no batch price in the tables: the documented discount
                        price = online * _BATCH_FACTOR[self.provider_id]
                return price
            tiered = {"service_tier": tier}
            if any(variant.when == tiered for variant in result.model.price_variants or ()):
                result = calc_price(usage, self.model, provider_id=self.provider_id, price_context=tiered)
                return float(result.total_price)
        except (LookupError, ValueError) as exc:  # the model left the tables, or an odd usage
            logger.debug("no price for %s/%s: %s", self.provider_id, self.model, exc)
            return None
        if tier == "flex" and self.provider_id == "openai":
            return float(result.total_price) / 2
        logger.debug("no %s-tier price for %s/%s", tier, self.provider_id, self.model)
        return None


_lock = threading.Lock()
_known: dict[tuple[str, str, str | None], Pricing | None] = {}


def pricing_for(engine: str, model: str, tier: str | None = None) -> Pricing | None:
    """The pricing of ``model`` on ``engine`` at service ``tier``, or None (local engine, unknown provider
    or model)."""
    provider = PRICE_PROVIDERS.get(str(engine).upper())
    if provider is None or not model:
        return None
    for prefix in _PREFIXES.get(str(engine).upper(), ()):
        model = model.removeprefix(prefix)
    key = (provider, model, tier)
    with _lock:
        if key in _known:
            return _known[key]
    pricing: Pricing | None = Pricing(provider, model, tier)
    assert pricing is not None
    if Pricing(provider, model).estimate(1000, 1000) is None:
        pricing = None
    with _lock:
        _known[key] = pricing
    return pricing


def price_answer(answered: Conversation, pricing: Pricing | None, *, batch: bool = False) -> float | None:
    """The answered row's cost from its reported usage (at the batch price with ``batch``), also written
    to its ``metadata["cost_usd"]``; None when unknown. Every writer of a job's rows prices them here.

    A row answered by a fallback engine (``metadata["answered_by"]``, :mod:`infermux.engines.fallback`) is
    priced by the model that answered it, not ``pricing``."""
    by = answered.metadata.get("answered_by")
    if isinstance(by, Mapping):
        pricing = pricing_for(str(by.get("engine", "")), str(by.get("model", "")))
    if pricing is None:
        return None
    served = answered.metadata.get("service_tier")
    cost = pricing.cost(answered.usage, batch=batch, tier=served if isinstance(served, str) else None)
    if cost is not None:
        answered.metadata["cost_usd"] = round(cost, 10)
    return cost


@dataclass
class CostTotals:
    """Running totals of a job: dollars of the rows priced, and how many rows had no price."""

    dollars: float = 0.0
    priced: int = 0
    unpriced: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, cost: float | None) -> None:
        with self._lock:
            if cost is None:
                self.unpriced += 1
            else:
                self.dollars += cost
                self.priced += 1

    @property
    def known(self) -> bool:
        """Whether every row counted so far had a price."""
        return self.unpriced == 0 and self.priced > 0

    def describe(self) -> str:
        """``$0.0123``, ``$0.0123 (+3 rows unpriced)``, or ``cost unknown``."""
        if self.priced == 0:
            return "cost unknown"
        text = f"${self.dollars:.4f}"
        if self.unpriced:
            text += f" (+{self.unpriced} rows unpriced)"
        return text
