"""``infermux infer --dry-run``: what a job would send, cost and take, without sending or loading anything.

:func:`plan_job` reads and checks the input, counts the rows still to run (rows already in the partial
file under the same fingerprint, and rows the answer cache would answer, are not sent), estimates their
prompt tokens (characters / 4, the estimate the limiter uses) and their completion tokens (at most
``max_new_tokens`` each: an upper bound), prices them online and through the provider's batch API
(``genai-prices``; unknown: None), and derives the time the configured per-minute limits alone impose.

On a local engine there is nothing to price or rate-limit: the plan counts prompt tokens exactly where
the engine can without loading its model (``prompt_counter``: LLAMACPP reads the GGUF's vocabulary,
NATIVE loads the tokenizer, and both render the chat template as the job does) and estimates the time
from the speed of the last job of the same model and engine on this machine (:func:`remember_speed`,
kept beside the answer cache).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infermux.configs.engine_type import engine_name
from infermux.jobs import finished
from infermux.jobs.files import DoneRows, JobFiles
from infermux.jobs.finished import finished_rows
from infermux.jobs.lock import running_pid
from infermux.jobs.options import cache_wanted, estimated_prompt_tokens, request_digest, request_of
from infermux.jobs.row_settings import max_new_tokens_of
from infermux.jobs.rows import iter_rows, validate_file
from infermux.jobs.tables import TableColumns

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from infermux.configs.inference_config import InferenceConfig
    from infermux.jobs.loop import BatchReport
    from infermux.jobs.rows import InputRow
    from infermux.types import Conversation, Tool

__all__ = ["JobPlan", "plan_job", "remember_speed"]

logger = logging.getLogger("infermux.jobs")


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
    #: The output is a finished job on these rows and config: a run would send nothing.
    finished: bool = False
    #: Rows recorded before their content was edited: they would be answered again.
    changed: int = 0
    #: The PID of a run writing this output now (it holds the job's lock), if any.
    running_pid: int | None = None
    local: bool = False
    """A local engine: no prices, batch API or per-minute limits; ``speed`` gives the time instead."""
    tokens_exact: bool = False
    """``prompt_tokens`` counted with the model's tokenizer and chat template (else characters / 4)."""
    speed: dict[str, Any] | None = None
    """The last job of this model and engine on this machine (:func:`remember_speed`)."""

    def describe(self, engine: str, model: str) -> str:
        def money(value: float | None) -> str:
            return "cost unknown" if value is None else f"${value:.4f}"

        how = "with the chat template, as the job will send them" if self.tokens_exact else "characters / 4"
        lines = [f"dry run: {engine} {model} (nothing sent, no model loaded)"]
        if self.running_pid is not None:
            who = f"a run (PID {self.running_pid})" if self.running_pid else "another run"
            lines.append(f"note: {who} is writing this output now; these counts will change")
        if self.finished:
            lines.append(f"rows: {self.rows}: the job is already finished (same input and config); nothing to send")
            return "\n".join(lines)
        changed = f", {self.changed} changed since they were answered" if self.changed else ""
        lines += [
            f"rows: {self.rows} ({self.already_done} already done{changed}, {self.cached} in the answer cache, "
            f"{self.to_send} to send)",
            f"{'input' if self.tokens_exact else 'estimated input'} tokens: {self.prompt_tokens} ({how})",
            f"completion tokens: at most {self.max_completion_tokens} (max_new_tokens per row)",
        ]
        if self.local:
            lines.append(self._local_time(engine))
            return "\n".join(lines)
        lines += [
            f"estimated cost online: {money(self.cost_online)} (at most; input estimated)",
            f"estimated cost through the batch API: {money(self.cost_batch)}",
        ]
        if self.minutes_at_limits is None:
            lines.append("time at the configured limits: no per-minute limits set")
        else:
            lines.append(f"time at the configured limits: at least {self.minutes_at_limits:.1f} min")
        return "\n".join(lines)

    def _local_time(self, engine: str) -> str:
        rate = (self.speed or {}).get("rows_per_s") or 0
        if not self.to_send:
            return "time: none (nothing to send)"
        if rate <= 0:
            return (
                f"time: unknown until a job of this model has run on {engine} here (the first job measures it; "
                "model loading comes on top)"
            )
        return (
            f"time: about {_duration(self.to_send / rate)} at {rate:.2f} rows/s, the speed of the last job of "
            "this model here (plus loading the model)"
        )


def _duration(seconds: float) -> str:
    whole = max(1, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


def plan_job(config: InferenceConfig, tools: list[Tool] | None = None) -> JobPlan:
    """What running ``config`` would do (``--dry-run``); ``tools``: the CLI's default ``--tools``, which
    count for the job's fingerprint and its rows as in the run."""
    from infermux.errors import InputError
    from infermux.jobs.cost import PRICE_PROVIDERS, pricing_for
    from infermux.jobs.rows import tools_fingerprint, with_default_tools
    from infermux.jobs.table_out import job_files

    if not config.input_path:
        raise InputError("no input: set input_path (or --input_path).")
    columns = TableColumns.of(config)
    ids = validate_file(config.input_path, columns=columns)
    fingerprint = config.fingerprint()
    if tools:
        fingerprint = tools_fingerprint(fingerprint, tools)
    input_path = config.input_path

    def rows() -> Iterator[InputRow]:  # the rows as the run reads them
        return with_default_tools(iter_rows(input_path, columns), tools)

    done = DoneRows(0)
    changed, running = 0, None
    if config.output_path:
        files = job_files(config.output_path, fingerprint, job_dir=config.job_dir, input_path=input_path,
                          columns=columns, output_format_name=config.output_format)  # fmt: skip
        running = running_pid(files.lock_path)
        if finished_rows(files, rows) == len(ids):
            return JobPlan(len(ids), len(ids), 0, 0, 0, 0, 0.0, 0.0, None, finished=True, running_pid=running)
        done = files.load_done(ids, compact=False, rows=rows)
        changed = files.changed_rows
        if not done and files.index.exists():  # a finished job whose input changed: its unchanged rows are done
            done, changed = _finished_done(files, rows, len(ids))
    cache = None
    if cache_wanted(config.cache, config.generation):
        from infermux.jobs.cache import AnswerCache, cache_key

        cache = AnswerCache(config.cache_path, max_bytes=config.cache_max_mb * (1 << 20))
    engine = config.resolved_engine()
    name = engine_name(engine)
    local = _is_local(name)
    count = _prompt_counter(config, name) if local else None
    cached = to_send = prompt = completion = 0
    try:
        for row in rows():
            if row.index in done:
                continue
            if cache is not None and cache.get(cache_key(fingerprint, request_of(row.conversation))) is not None:
                cached += 1
                continue
            to_send += 1
            prompt += count(row.conversation) if count is not None else estimated_prompt_tokens(row.conversation)
            completion += max_new_tokens_of(row.conversation, config.generation)  # the row's own limit, if any
    finally:
        if cache is not None:
            cache.close()
    tier = config.generation.service_tier
    pricing = pricing_for(name, config.model.model_name, tier) if name.upper() in PRICE_PROVIDERS else None
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
    return JobPlan(
        len(ids), len(done), cached, to_send, prompt, completion, online, batch, minutes,
        changed=changed, running_pid=running,
        local=local, tokens_exact=count is not None, speed=_speeds().get(_speed_key(name, config)) if local else None,
    )  # fmt: skip


def _finished_done(files: JobFiles, rows: Callable[[], Iterable[InputRow]], total: int) -> tuple[DoneRows, int]:
    """The rows (positions) of a finished job's index still done on the current input (same id and
    content), and how many of its rows changed; nothing when the config or the output changed (every row
    runs again)."""
    done = DoneRows(total)
    entries = finished.index_entries(files)
    if entries is None:
        return done, 0
    changed = 0
    for row in rows():
        digest = entries.get(row.row_id)
        if digest is not None:
            if digest == request_digest(row.conversation):
                done.mark(row.index)
            else:
                changed += 1
    return done, changed


def _is_local(engine: str) -> bool:
    from infermux.engines.registry import engine_specs

    spec = engine_specs().get(engine)
    return spec is not None and not spec.remote


def _prompt_counter(config: InferenceConfig, engine: str) -> Callable[[Conversation], int] | None:
    """The engine's exact prompt counter, or None (not installed, none declared, or it failed: the plan
    then estimates, and says so)."""
    from infermux.engines.registry import engine_class, is_available

    if not is_available(engine):
        return None
    try:
        return engine_class(engine).prompt_counter(config.model, config.generation)
    except Exception as exc:  # a missing model file is the job's error to report; the plan estimates
        logger.debug("no exact prompt count for %s: %s", engine, exc)
        return None


def _speeds_path() -> Path:
    from infermux.jobs.cache import default_cache_path

    return default_cache_path().with_name("speeds.json")


def _speed_key(engine: str, config: InferenceConfig) -> str:
    return f"{engine} {config.model.model_name}"


def _speeds() -> dict[str, Any]:
    try:
        data = json.loads(_speeds_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remember_speed(config: InferenceConfig, report: BatchReport) -> None:
    """Keep how fast a local job answered (rows/s, not counting loading or cached rows), for the next
    ``--dry-run``'s time estimate. Jobs too small to measure, and remote engines, are not kept."""
    name = engine_name(config.resolved_engine())
    answered = report.done - report.cached
    if answered < 2 or report.elapsed <= 0 or not _is_local(name):
        return
    speeds = _speeds()
    speeds[_speed_key(name, config)] = {
        "rows_per_s": round(answered / report.elapsed, 4),
        "completion_tokens_per_s": round(report.completion_tokens / report.elapsed, 2),
        "max_new_tokens": config.generation.max_new_tokens,
    }
    path = _speeds_path()
    try:
        from infermux.jobs.progress import write_json_atomically

        os.makedirs(path.parent, exist_ok=True)
        write_json_atomically(path, speeds)
    except OSError as exc:  # a read-only cache folder costs the next estimate, not this job
        logger.debug("speeds not kept in %s: %s", path, exc)
