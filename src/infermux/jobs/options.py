"""What a job does around the engine: the answer cache, prices, the budget (all optional).

:class:`JobOptions` travels from the config (:meth:`JobOptions.from_config`) or the caller into
:func:`infermux.jobs.loop.run_job`. Nothing here imports an engine or a heavy library: ``genai-prices``
is loaded only for engines that have prices, the cache only when it is used.

* **Cache** (:mod:`infermux.jobs.cache`): a row's key is the config fingerprint plus what decides its
  answer (:func:`request_of`: the messages' roles and contents, and tools). A hit is recorded like an
  answered row, with ``metadata["cached"] = true`` and no cost.
* **Cost** (:mod:`infermux.jobs.cost`): each answered row gets ``metadata["cost_usd"]`` when the model has
  known prices; the report keeps the totals.
* **Budget** (``max_cost``): before a row starts, its cost is estimated (prompt: characters / 4;
  completion: the mean reported so far, ``max_new_tokens`` before the first reply); a row whose
  estimate, added to what was spent and what is in flight, would pass the budget is not started, nor is
  any row after it. The job then ends resumable (:attr:`BatchReport.budget_stopped`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from infermux.configs.engine_type import engine_name
from infermux.errors import ConfigError

if TYPE_CHECKING:
    from infermux.configs.generation_params import GenerationParams
    from infermux.configs.inference_config import InferenceConfig
    from infermux.jobs.cache import AnswerCache
    from infermux.jobs.cost import Pricing
    from infermux.jobs.rows import InputRow
    from infermux.types import Conversation

logger = logging.getLogger("infermux.jobs")

__all__ = [
    "Budget",
    "JobOptions",
    "cache_wanted",
    "estimated_prompt_tokens",
    "request_digest",
    "request_of",
    "row_digest",
]


def request_of(conversation: Conversation) -> dict[str, Any]:
    """What decides a row's answer: its messages (role and content, not ids), its tools and its own generation
    settings. Other keys the data model does not know (kept for the output, never sent to a model) do not
    count."""
    data = conversation.to_json_dict()
    request: dict[str, Any] = {}
    if "tools" in data:
        request["tools"] = data["tools"]
    request["messages"] = [
        {k: (_known_items(v) if k == "content" else v) for k, v in m.items() if k in _MESSAGE_KEYS}
        for m in data["messages"]
    ]
    tools = conversation.metadata.get("tools")
    if tools is not None and "tools" not in request:
        request["tools"] = tools
    if "generation" in data:  # the row's own generation settings (infermux.jobs.row_settings)
        request["generation"] = data["generation"]
    return request


_MESSAGE_KEYS = frozenset({"content", "role", "tool_calls", "tool_call_id", "reasoning_content"})
_ITEM_KEYS = frozenset({"type", "content", "binary"})


def _known_items(content: Any) -> Any:
    if not isinstance(content, list):
        return content
    return [item if item.keys() <= _ITEM_KEYS else {k: item[k] for k in item if k in _ITEM_KEYS} for item in content]


def request_digest(conversation: Conversation) -> str:
    """A short digest of the row as the input has it (messages, tools, metadata and keys the data model
    does not know): what identifies a row's content for resume, so that any edit (same id) records the row
    again and its output line follows the input. The answer cache keys on :func:`request_of` only, so a row
    whose edit does not change its request is answered again from the cache, without a request."""
    blob = json.dumps(conversation.to_json_dict(), sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                      default=str)  # fmt: skip
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def row_digest(row: InputRow) -> str:
    """The digest that identifies ``row``'s content for resume: of the row as the input has it (whichever
    writer records it: the default tools a job adds count through the fingerprint instead)."""
    return row.source_digest or request_digest(row.conversation)


def estimated_prompt_tokens(conversation: Conversation) -> int:
    """The documented estimate: one token per 4 characters of the messages' text (at least 1)."""
    chars = sum(len(message.text) for message in conversation.messages)
    return max(1, (chars + 3) // 4)


def cache_wanted(setting: bool | None, generation: GenerationParams) -> bool:
    """``setting`` if given; else on for greedy or seeded generation, off for sampling without a seed."""
    if setting is not None:
        return setting
    return not generation.sampling or generation.seed is not None


@dataclass
class Budget:
    """Dollars spent and reserved by rows in flight, against ``limit``."""

    limit: float
    spent: float = 0.0
    reserved: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def reserve(self, estimate: float) -> bool:
        """Reserve ``estimate`` dollars for a row about to start; False when that would pass the limit."""
        with self._lock:
            if self.spent + self.reserved + estimate > self.limit:
                return False
            self.reserved += estimate
            return True

    def settle(self, estimate: float, actual: float | None) -> None:
        """The row finished: drop its reservation and count what it cost (its estimate when unknown)."""
        with self._lock:
            self.reserved = max(0.0, self.reserved - estimate)
            self.spent += estimate if actual is None else actual


@dataclass
class JobOptions:
    """Optional behaviour of a job: answer cache, prices, budget."""

    cache: AnswerCache | None = None
    pricing: Pricing | None = None
    max_cost: float | None = None
    owns_cache: bool = False  # close the cache when the job ends
    fingerprint: str = ""  # the config fingerprint, part of every cache key (set by the job facade)
    #: The cache was asked for (``cache: true``), so it holds sampled answers too: else a row whose own
    #: settings sample without a seed is neither looked up nor stored (see :func:`cache_wanted`).
    cache_sampling: bool = False

    @classmethod
    def build(
        cls,
        engine_name: str,
        model: str,
        generation: GenerationParams,
        *,
        cache: bool | None = None,
        cache_path: str | None = None,
        cache_max_mb: int = 1024,
        max_cost: float | None = None,
    ) -> JobOptions:
        """Options for a job of ``model`` on ``engine_name``; raises ConfigError for a budget that cannot
        be enforced (a model without known prices)."""
        from infermux.jobs.cost import PRICE_PROVIDERS, pricing_for

        tier = generation.service_tier
        pricing = pricing_for(engine_name, model, tier) if engine_name.upper() in PRICE_PROVIDERS else None
        if max_cost is not None and pricing is None:
            raise ConfigError(
                f"max_cost: no known prices for model {model!r} on {engine_name}, so a budget cannot be "
                "enforced (costs would be guesses). Remove --max-cost, or use a model listed by genai-prices."
            )
        answer_cache = None
        if cache_wanted(cache, generation):
            import sqlite3

            from infermux.jobs.cache import AnswerCache

            try:
                answer_cache = AnswerCache(cache_path, max_bytes=cache_max_mb * (1 << 20))
            except (OSError, sqlite3.Error) as exc:  # an unwritable home must not stop the job
                logger.warning("answer cache not used (%s: %s); set cache_path or --no-cache", cache_path or "", exc)
        return cls(cache=answer_cache, pricing=pricing, max_cost=max_cost, owns_cache=answer_cache is not None,
                   cache_sampling=bool(cache))  # fmt: skip

    @classmethod
    def from_config(cls, config: InferenceConfig) -> JobOptions:
        engine = config.resolved_engine()
        options = cls.build(
            engine_name(engine),
            config.model.model_name,
            config.generation,
            cache=config.cache,
            cache_path=config.cache_path,
            cache_max_mb=config.cache_max_mb,
            max_cost=config.max_cost,
        )
        if options.pricing is None and config.fallbacks:
            # Rows are priced by the model that answered them (cost.price_answer): a job whose first engine
            # has no prices still counts what its priced fallbacks cost.
            from infermux.jobs.cost import pricing_for

            priced = (pricing_for(engine_name(f.engine), f.model.model_name) for f in config.fallbacks)
            options.pricing = next((p for p in priced if p is not None), None)
        return options

    def close(self) -> None:
        if self.owns_cache and self.cache is not None:
            self.cache.close()
