"""``infermux infer --dry-run``: what a job would send, cost and take, without sending or loading anything.

:func:`plan_job` reads and checks the input, counts the rows still to run (rows already in the partial
file under the same fingerprint, and rows the answer cache would answer, are not sent), estimates their
prompt tokens (characters / 4, the estimate the limiter uses) and their completion tokens (at most
``max_new_tokens`` each: an upper bound), prices them online and through the provider's batch API
(``genai-prices``; unknown: None), and derives the time the configured per-minute limits alone impose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from infermux.configs.engine_type import engine_name
from infermux.jobs.options import cache_wanted, estimated_prompt_tokens, request_of
from infermux.jobs.rows import iter_rows, validate_file
from infermux.jobs.tables import TableColumns

if TYPE_CHECKING:
    from infermux.configs.inference_config import InferenceConfig

__all__ = ["JobPlan", "plan_job"]


@dataclass
class JobPlan:
    rows: int
    already_done: int
    cached: int
    to_send: int
    prompt_tokens: int
    max_completion_tokens: int
    cost_online: float | None
    cost_batch: float | None
    minutes_at_limits: float | None

    def describe(self, engine: str, model: str) -> str:
        def money(value: float | None) -> str:
            return "cost unknown" if value is None else f"${value:.4f}"

        lines = [
            f"dry run: {engine} {model} (nothing sent, no model loaded)",
            f"rows: {self.rows} ({self.already_done} already done, {self.cached} in the answer cache, "
            f"{self.to_send} to send)",
            f"estimated input tokens: {self.prompt_tokens} (characters / 4)",
            f"completion tokens: at most {self.max_completion_tokens} (max_new_tokens per row)",
            f"estimated cost online: {money(self.cost_online)} (at most; input estimated)",
            f"estimated cost through the batch API: {money(self.cost_batch)}",
        ]
        if self.minutes_at_limits is None:
            lines.append("time at the configured limits: no per-minute limits set")
        else:
            lines.append(f"time at the configured limits: at least {self.minutes_at_limits:.1f} min")
        return "\n".join(lines)


def plan_job(config: InferenceConfig) -> JobPlan:
    from infermux.errors import InputError
    from infermux.jobs.cost import PRICE_PROVIDERS, pricing_for
    from infermux.jobs.files import JobFiles

    if not config.input_path:
        raise InputError("no input: set input_path (or --input_path).")
    columns = TableColumns.of(config)
    ids = validate_file(config.input_path, columns=columns)
    fingerprint = config.fingerprint()
    done: set[str] = set()
    if config.output_path:
        done = JobFiles(config.output_path, fingerprint, job_dir=config.job_dir).load_done(compact=False) & set(ids)
    cache = None
    if cache_wanted(config.cache, config.generation):
        from infermux.jobs.cache import AnswerCache, cache_key

        cache = AnswerCache(config.cache_path, max_bytes=config.cache_max_mb * (1 << 20))
    cached = to_send = prompt = 0
    try:
        for row in iter_rows(config.input_path, columns):
            if row.row_id in done:
                continue
            if cache is not None and cache.get(cache_key(fingerprint, request_of(row.conversation))) is not None:
                cached += 1
                continue
            to_send += 1
            prompt += estimated_prompt_tokens(row.conversation)
    finally:
        if cache is not None:
            cache.close()
    completion = to_send * config.generation.max_new_tokens
    engine = config.resolved_engine()
    name = engine_name(engine)
    pricing = pricing_for(name, config.model.model_name) if name.upper() in PRICE_PROVIDERS else None
    online = pricing.estimate(prompt, completion) if pricing else None
    batch = pricing.estimate(prompt, completion, batch=True) if pricing else None
    minutes: float | None = None
    params = config.remote_params
    if params is not None:
        spans = [
            amount / limit
            for amount, limit in (
                (to_send, params.requests_per_minute),
                (prompt, params.input_tokens_per_minute),
                (completion, params.output_tokens_per_minute),
            )
            if limit
        ]
        minutes = max(spans) if spans else None
    return JobPlan(len(ids), len(done), cached, to_send, prompt, completion, online, batch, minutes)
