"""The durable batch loop, written once for every engine.

A job streams rows in, hands them to the engine in chunks with bounded concurrency, and appends every
finished row to ``<output>.partial.jsonl`` (flushed per row) and every failed row to
``<output>.errors.jsonl``. Each partial line carries the row id and the config fingerprint, so a rerun
of the same command skips the rows already done and runs only the missing or failed ones. When every
row is done the output is assembled in input order into a temporary file and moved into place with
``os.replace``; the partial and errors files are then removed. A torn last line (``kill -9`` during a
write) is discarded on resume.

Memory stays flat in the number of rows: the loop keeps row ids and byte offsets, never the rows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from infermux.errors import RowError
from infermux.jobs.files import JobFiles
from infermux.jobs.rows import InputRow
from infermux.text import scrub_reply
from infermux.types import Conversation

if TYPE_CHECKING:
    from infermux.configs.generation_params import GenerationParams
    from infermux.engines.base import InferenceEngine

__all__ = ["BatchReport", "JobFiles", "record_result", "run_job"]  # JobFiles re-exported

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
    started: float = field(default_factory=time.monotonic)
    output_path: str | None = None
    errors_path: str | None = None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def ok(self) -> bool:
        return self.failed == 0


def _chunks(rows: Iterable[InputRow], size: int) -> Iterator[list[InputRow]]:
    chunk: list[InputRow] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


OnResult = Callable[[InputRow, "Conversation | RowError"], None]


async def _run_chunks(
    engine: InferenceEngine,
    rows: Iterable[InputRow],
    generation: GenerationParams,
    on_result: OnResult,
) -> None:
    """Feed ``rows`` to the engine in chunks, ``engine.max_concurrency()`` chunks at a time."""
    size = max(1, engine.chunk_size(generation))
    workers = max(1, engine.max_concurrency())
    # Workers pull from one shared iterator (``next`` never awaits, so no two workers interleave inside
    # it): no feeder task and no queue hand-off per chunk, which matters at one row per chunk.
    chunks = _chunks(rows, size)

    async def work() -> None:
        for chunk in chunks:
            for row, result in zip(chunk, await _infer_safely(engine, chunk, generation), strict=True):
                on_result(row, result)

    await asyncio.gather(*(work() for _ in range(workers)))


async def _infer_safely(
    engine: InferenceEngine, chunk: list[InputRow], generation: GenerationParams
) -> list[Conversation | RowError]:
    results: list[Conversation | RowError | None] = [None] * len(chunk)
    runnable: list[int] = []
    for i, row in enumerate(chunk):
        problem = engine.check_conversation(row.conversation)
        if problem is not None:
            results[i] = problem
        else:
            runnable.append(i)
    if runnable:
        try:
            out = await engine._infer_chunk([chunk[i].conversation for i in runnable], generation)
            if len(out) != len(runnable):
                raise RuntimeError(f"engine returned {len(out)} results for {len(runnable)} rows")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a chunk-wide failure becomes a failure of each of its rows
            error = RowError.from_exception(exc)
            out = [error] * len(runnable)
        for i, result in zip(runnable, out, strict=True):
            results[i] = result
    return [r if r is not None else RowError(kind="internal", message="no result") for r in results]


def _count_usage(report: BatchReport, conversation: Conversation) -> None:
    usage = conversation.metadata.get("usage")
    if isinstance(usage, dict):
        report.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        report.completion_tokens += int(usage.get("completion_tokens") or 0)


def record_result(
    report: BatchReport, files: JobFiles | None, row: InputRow, result: Conversation | RowError
) -> Conversation | RowError:
    """Write one finished row to ``files`` and count it; return what was recorded (a reply that cannot be
    written becomes that row's ``output_error``). Every job writer records rows through here."""
    if isinstance(result, Conversation):
        result = scrub_reply(result)
        if result.conversation_id is None:  # output rows are valid input for the next turn, with a stable id
            result = result.model_copy(update={"conversation_id": row.row_id})
        if files is not None:
            try:
                files.append_done(row, result)
            except Exception as exc:  # a row that cannot be recorded is that row's failure, not the job's
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
        _count_usage(report, result)
    return result


async def run_job(
    engine: InferenceEngine,
    rows: Callable[[], Iterable[InputRow]],
    row_ids: list[str],
    generation: GenerationParams,
    *,
    files: JobFiles | None = None,
    on_row: OnResult | None = None,
    on_progress: Callable[[BatchReport], None] | None = None,
) -> BatchReport:
    """Run every row not already done; record results in ``files`` and pass each to ``on_row``."""
    report = BatchReport(total=len(row_ids))
    done: set[str] = set()
    if files is not None:
        files.check_writable()
        done = files.load_done() & set(row_ids)
        report.resumed = len(done)
        report.output_path = str(files.output)
        files.open()

    def on_result(row: InputRow, result: Conversation | RowError) -> None:
        result = record_result(report, files, row, result)
        if on_row is not None:
            on_row(row, result)
        if on_progress is not None:
            on_progress(report)

    todo = (row for row in rows() if row.row_id not in done)
    try:
        await engine._start_job()
        try:
            await _run_chunks(engine, todo, generation, on_result)
        finally:
            await engine._end_job()
    finally:
        if files is not None:
            files.close()
    if files is not None:
        files.assemble(row_ids, complete=report.failed == 0)
        if report.failed:
            report.errors_path = str(files.errors)
    return report
