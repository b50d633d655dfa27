"""The durable batch loop, written once for every engine.

A job streams rows in, hands them to the engine in chunks with bounded concurrency, and appends every
finished row to ``<output>.partial.jsonl`` (flushed per row) and every failed row to
``<output>.errors.jsonl``. Each partial line carries the row id and the config fingerprint, so a rerun
of the same command skips the rows already done and runs only the missing or failed ones. When every
row is done the output is assembled in input order into a temporary file and moved into place with
``os.replace``; the partial and errors files are then removed. A torn last line (``kill -9`` during a
write) is discarded on resume.

Memory stays flat in the number of rows: the loop keeps one byte offset per row (where its answer is in
the partial file, by input position; :class:`~infermux.jobs.files.DoneRows`), never the rows or their ids.

With :class:`~infermux.jobs.options.JobOptions` the loop also answers rows from the answer cache
(recorded like answered rows, ``metadata["cached"] = true``), prices answered rows
(``metadata["cost_usd"]``) and stops starting rows once the budget would be passed
(``report.budget_stopped``; the job stays resumable).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from infermux.errors import RowError
from infermux.jobs.cache import cache_key
from infermux.jobs.collector import fewer_collections
from infermux.jobs.cost import CostTotals, price_answer
from infermux.jobs.files import DoneRows, JobFiles, JobWriteError
from infermux.jobs.finished import drop_leftovers, finished_rows, reopen
from infermux.jobs.options import Budget, JobOptions, estimated_prompt_tokens, request_of
from infermux.jobs.row_settings import RowSettings, max_new_tokens_of, samples_unseeded, settings_key
from infermux.jobs.rows import InputRow
from infermux.jobs.spans import job_spans
from infermux.text import scrub_reply
from infermux.types import Conversation

if TYPE_CHECKING:
    from infermux.configs.generation_params import GenerationParams
    from infermux.engines.base import InferenceEngine
    from infermux.jobs.cache import AnswerCache
    from infermux.jobs.cost import Pricing

__all__ = ["BatchReport", "JobFiles", "record_result", "run_chunks", "run_job"]  # JobFiles re-exported

logger = logging.getLogger("infermux.jobs")


@dataclass
class BatchReport:
    """What a job did; ``failed`` rows are listed in ``errors_path``."""

    total: int = 0
    done: int = 0
    resumed: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: int = 0
    """Rows answered from the answer cache (counted in ``done`` too)."""
    truncated: int = 0
    """Answered rows that stopped at the token limit (``finish_reason: length``; counted in ``done`` too)."""
    cost: CostTotals = field(default_factory=CostTotals)
    budget_stopped: bool = False
    """The budget (``max_cost``) stopped the job before every row started; rerun to go on."""
    started: float = field(default_factory=time.monotonic)
    output_path: str | None = None
    errors_path: str | None = None
    #: The finished rows of an unfinished job (the resume state), when the job writes a file.
    partial_path: str | None = None
    already_finished: bool = False
    """The job had already finished, on the same rows and config: nothing was sent (``resumed`` counts
    every row)."""
    changed: int = 0
    """Rows answered again because their content changed since they were answered."""

    @property
    def finished(self) -> int:
        """Rows with a result: resumed, answered or failed."""
        return self.resumed + self.done + self.failed

    @property
    def not_started(self) -> int:
        return max(0, self.total - self.finished)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def ok(self) -> bool:
        return self.failed == 0


def _chunks(rows: Iterable[InputRow], size: int) -> Iterator[list[InputRow]]:
    """Chunks of ``size`` rows, each of rows with equal generation settings (per-row overrides, see
    :mod:`infermux.jobs.row_settings`): a row waits for others with its settings while fewer than four
    chunks' rows wait in all, then the oldest group goes as it is."""
    if size == 1:
        for row in rows:
            yield [row]
        return
    groups: dict[str, list[InputRow]] = {}
    waiting = 0
    for row in rows:
        key = settings_key(row.conversation)
        group = groups.setdefault(key, [])
        group.append(row)
        waiting += 1
        if len(group) >= size:
            waiting -= len(group)
            yield groups.pop(key)
        elif waiting >= 4 * size:
            oldest = groups.pop(next(iter(groups)))
            waiting -= len(oldest)
            yield oldest
    yield from groups.values()


OnResult = Callable[[InputRow, "Conversation | RowError"], None]


async def run_chunks(
    engine: InferenceEngine,
    rows: Iterable[InputRow],
    generation: GenerationParams,
    on_result: OnResult,
    lookup: Callable[[InputRow], Conversation | RowError | None] | None = None,
    enter: Callable[[list[InputRow]], contextlib.AbstractContextManager[None]] | None = None,
) -> None:
    """Feed ``rows`` to the engine in chunks, ``engine.max_concurrency()`` chunks at a time; rows that
    ``lookup`` answers (the cache) skip the engine. Each row goes to ``on_result`` as soon as it is finished
    (on engines that hand rows back one by one, before the rest of its chunk). An exception ``on_result``
    raises (the job's own files cannot be written) stops every worker: no further row is sent. ``enter``
    (tracing) gives the context each chunk is answered in."""
    size = max(1, engine.chunk_size(generation))
    workers = max(1, engine.max_concurrency())
    each = engine.yields_rows()
    settings = RowSettings(generation, engine)  # each chunk's settings: the job's, or its rows' overrides
    # Workers pull from one shared iterator (``next`` never awaits, so no two workers interleave inside
    # it): no feeder task and no queue hand-off per chunk, which matters at one row per chunk.
    chunks = _chunks(rows, size)

    async def work() -> None:
        for chunk in chunks:
            if lookup is not None:
                misses = []
                for row in chunk:
                    hit = lookup(row)
                    if hit is None:
                        misses.append(row)
                    else:
                        on_result(row, hit)
                chunk = misses
                if not chunk:
                    continue
            if enter is None:
                await answer(chunk)
            else:
                with enter(chunk):
                    await answer(chunk)

    async def answer(chunk: list[InputRow]) -> None:
        # (one row a chunk on remote engines: this runs for every row)
        conversations = [chunk[0].conversation] if len(chunk) == 1 else [row.conversation for row in chunk]
        chosen = settings.of(conversations[0])
        if isinstance(chosen, RowError):  # the rows' overrides are not possible on this engine
            for row in chunk:
                on_result(row, chosen)
        elif each:
            results = engine.answer_each(conversations, chosen)
            async with contextlib.aclosing(results):  # type: ignore[type-var]
                async for index, result in results:
                    on_result(chunk[index], result)
        else:
            answers = await engine.answer(conversations, chosen)
            if len(chunk) == 1:
                on_result(chunk[0], answers[0])
            else:
                for row, result in zip(chunk, answers, strict=True):
                    on_result(row, result)

    with fewer_collections():  # a few objects per row in flight, almost no garbage (see jobs/collector.py)
        if workers == 1:
            await work()
            return
        tasks = [asyncio.ensure_future(work()) for _ in range(workers)]
        try:
            await asyncio.gather(*tasks)
        finally:  # one worker failed (or the job was cancelled): the others stop too, before anything else runs
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def record_result(
    report: BatchReport, files: JobFiles | None, row: InputRow, result: Conversation | RowError
) -> Conversation | RowError:
    """Write one finished row to ``files`` and count it; return what was recorded (a reply that cannot be
    written becomes that row's ``output_error``). Every job writer records rows through here."""
    if isinstance(result, Conversation):
        result = scrub_reply(result)
        if result.conversation_id is None:  # output rows are valid input for the next turn, with a stable id
            result = result.replace(conversation_id=row.row_id)
        if files is not None:
            try:
                files.append_done(row, result)
            except JobWriteError:  # the job's file cannot be written: the job stops (see run_chunks)
                raise
            except Exception as exc:  # a row that cannot be serialised is that row's failure, not the job's
                logger.debug("row %s could not be recorded", row.row_id, exc_info=True)
                result = RowError(
                    kind="output_error",
                    message=f"the answer could not be written ({type(exc).__name__}: {exc})"[:1000],
                )
    if isinstance(result, RowError):
        report.failed += 1
        if files is not None:
            files.append_failed(row, result)
    else:
        report.done += 1
        prompt, completion, truncated = result.answer_counts()
        report.prompt_tokens += prompt
        report.completion_tokens += completion
        report.truncated += truncated
    return result


async def run_job(
    engine: InferenceEngine,
    rows: Callable[[], Iterable[InputRow]],
    row_ids: Sequence[str],
    generation: GenerationParams,
    *,
    files: JobFiles | None = None,
    on_row: OnResult | None = None,
    on_progress: Callable[[BatchReport], None] | None = None,
    options: JobOptions | None = None,
    settled: Mapping[str, RowError] | None = None,
) -> BatchReport:
    """Run every row not already done; record results in ``files`` and pass each to ``on_row``.

    Rows in ``settled`` (row id → error) are recorded as failed without running: failures already
    known not to be worth another request (a Batch API said the request itself is wrong)."""
    options = options or JobOptions()
    report = BatchReport(total=len(row_ids))
    if files is None:
        return await _run_rows(engine, rows, generation, report, None, None, on_row, on_progress, options, settled)
    files.check_writable()
    with files.locked(), fewer_collections():  # reading, answering and assembling: see jobs/collector.py
        report.output_path = files.destination
        report.partial_path = str(files.partial)
        if finished_rows(files, rows) == report.total:
            report.resumed, report.already_finished, report.partial_path = report.total, True, None
            drop_leftovers(files)
            logger.info("%s: the job is already finished; nothing to send", files.destination)
            if on_progress is not None:
                on_progress(report)
            return report
        reopen(files)
        done = files.load_done(row_ids, rows=rows)
        report.resumed, report.changed = len(done), files.changed_rows
        if options.cache is not None and done:
            _backfill_cache(options.cache, options.fingerprint, files, rows)
        files.open()
        try:
            await _run_rows(engine, rows, generation, report, files, done, on_row, on_progress, options, settled)
        finally:
            files.close()
        files.assemble(row_ids, complete=report.failed == 0 and report.not_started == 0)
        if report.failed:
            report.errors_path = str(files.errors)
        return report


async def _run_rows(
    engine: InferenceEngine,
    rows: Callable[[], Iterable[InputRow]],
    generation: GenerationParams,
    report: BatchReport,
    files: JobFiles | None,
    done: DoneRows | None,
    on_row: OnResult | None,
    on_progress: Callable[[BatchReport], None] | None,
    options: JobOptions,
    settled: Mapping[str, RowError] | None,
) -> BatchReport:
    """The rows not ``done`` through the engine, each recorded in ``files`` (already open) as it finishes."""
    cache, pricing = options.cache, options.pricing
    budget = Budget(options.max_cost) if options.max_cost is not None and pricing is not None else None
    reserved: dict[str, float] = {}
    keys: dict[str, str] = {}

    def on_result(row: InputRow, result: Conversation | RowError) -> None:
        key = keys.pop(row.row_id, None)
        cost: float | None = None
        if isinstance(result, Conversation):
            if result.cached:
                report.cached += 1
                cost = 0.0
            else:
                cost = price_answer(result, pricing)
                if cache is not None and key is not None:
                    _remember(cache, key, row.conversation, result)
        result = record_result(report, files, row, result)
        if isinstance(result, Conversation) and pricing is not None:
            report.cost.add(cost)
        if budget is not None:
            budget.settle(reserved.pop(row.row_id, 0.0), cost)
        if on_row is not None:
            on_row(row, result)
        if on_progress is not None:
            on_progress(report)

    def on_plain_result(row: InputRow, result: Conversation | RowError) -> None:
        """``on_result`` without prices, budget or cache (nothing to price or remember per row)."""
        if isinstance(result, Conversation) and result.cached:
            report.cached += 1
        result = record_result(report, files, row, result)
        if on_row is not None:
            on_row(row, result)
        if on_progress is not None:
            on_progress(report)

    def lookup(row: InputRow) -> Conversation | RowError | None:
        if settled and row.row_id in settled:
            return settled[row.row_id]
        if cache is None:
            return None
        if not options.cache_sampling and samples_unseeded(row.conversation, generation):
            return None  # the row's own settings sample without a seed: a new answer each time, as asked
        key = cache_key(options.fingerprint, request_of(row.conversation))
        try:
            stored = cache.get(key)
        except Exception:  # a locked or damaged cache file: answer the row instead
            logger.warning("the answer cache could not be read", exc_info=True)
            stored = None
        hit = _from_cache(row.conversation, stored) if stored is not None else None
        if hit is None:
            keys[row.row_id] = key
        return hit

    def todo() -> Iterator[InputRow]:
        for row in rows():
            if done is not None and row.index in done:
                continue
            if budget is not None and pricing is not None:
                estimate = _estimate_cost(row.conversation, pricing, generation, report)
                if not budget.reserve(estimate):
                    report.budget_stopped = True
                    logger.warning("max_cost $%.4f reached: no new rows are started", budget.limit)
                    return
                reserved[row.row_id] = estimate
            yield row

    if on_progress is not None:
        on_progress(report)  # once before any row: progress displays get the report (and the total)
    async with engine.session():
        use_lookup = cache is not None or bool(settled)
        # Nothing to skip and no budget (in-memory jobs): the rows as they come, without a filter.
        pending = todo() if done or budget is not None else rows()
        plain = cache is None and pricing is None  # no pricing: no budget either
        recorder = on_plain_result if plain else on_result
        spans = job_spans(engine, generation)  # None: tracing is off
        if spans is None:
            await run_chunks(engine, pending, generation, recorder, lookup if use_lookup else None)
        else:
            with spans.job(report):
                await run_chunks(
                    engine, pending, generation, spans.recorder(recorder), lookup if use_lookup else None, spans.chunk
                )
    return report


def _backfill_cache(cache: AnswerCache, fingerprint: str, files: JobFiles,
                    rows: Callable[[], Iterable[InputRow]]) -> None:  # fmt: skip
    """Put the recorded rows the answer cache lacks into it (rows recorded just before a crash, which the
    cache had not written yet), so that every recorded row is in the cache. Rows are read back one at a
    time, by position (:meth:`JobFiles.recorded_at`): nothing is held per row."""
    done = files.done
    if done is None:
        return
    try:
        with files.partial.open("rb") as partial:
            for row in rows():
                if row.index in done:
                    key = cache_key(fingerprint, request_of(row.conversation))
                    if not cache.contains(key):
                        _remember(cache, key, row.conversation, files.recorded_at(partial, row.index))
    except Exception:  # a locked or damaged cache: the job runs without the backfill
        logger.warning("the answer cache could not be completed from the partial file", exc_info=True)


def _estimate_cost(
    conversation: Conversation, pricing: Pricing, generation: GenerationParams, report: BatchReport
) -> float:
    answered = report.done - report.cached
    completion = (
        round(report.completion_tokens / answered) if answered > 0 else max_new_tokens_of(conversation, generation)
    )
    estimate = pricing.estimate(estimated_prompt_tokens(conversation), completion)
    return estimate or 0.0


def _remember(cache: AnswerCache, key: str, original: Conversation, answered: Conversation) -> None:
    """Store what the engine added to the row: the new messages and the metadata it set."""
    added = {k: v for k, v in answered.metadata.items() if original.metadata.get(k, _MISSING) != v}
    added.pop("cost_usd", None)
    reply = [m.to_json_dict() for m in answered.messages[len(original.messages) :]]
    try:
        cache.put(key, {"messages": reply, "metadata": added})
    except Exception:  # a full disk or a locked file must not fail the row
        logger.warning("the answer cache could not store a row", exc_info=True)


def _from_cache(original: Conversation, stored: dict[str, Any]) -> Conversation | None:
    try:
        data = original.to_json_dict()
        data["messages"] = [*data["messages"], *stored["messages"]]
        data["metadata"] = {**original.metadata, **stored["metadata"], "cached": True}
        return Conversation.from_json_dict(data)
    except Exception:  # an entry from another version: answer the row again
        logger.debug("unreadable cache entry", exc_info=True)
        return None


_MISSING = object()
