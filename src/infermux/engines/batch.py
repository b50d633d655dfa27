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
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic_core import to_json

from infermux.errors import OutputError, RowError
from infermux.jsonl import InputRow
from infermux.types import Conversation

if TYPE_CHECKING:
    from infermux.configs.generation_params import GenerationParams
    from infermux.engines.base import InferenceEngine

__all__ = ["BatchReport", "JobFiles", "run_job"]


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


class JobFiles:
    """The output, partial and errors files of one job, and the resume state read from them."""

    def __init__(self, output_path: str | os.PathLike[str], fingerprint: str) -> None:
        self.output = Path(output_path)
        self.partial = self.output.with_name(self.output.name + ".partial.jsonl")
        self.errors = self.output.with_name(self.output.name + ".errors.jsonl")
        self.fingerprint = fingerprint
        self._partial_fh: Any = None
        self._errors_fh: Any = None

    def check_writable(self) -> None:
        parent = self.output.parent if str(self.output.parent) else Path(".")
        if self.output.is_dir():
            raise OutputError(f"{self.output}: is a directory; --output_path must name a file.")
        if not parent.is_dir():
            raise OutputError(f"{parent}: output directory does not exist. Create it or choose another path.")
        if not os.access(parent, os.W_OK):
            raise OutputError(f"{parent}: output directory is not writable. Choose another --output_path.")

    def load_done(self) -> set[str]:
        """Row ids already finished under this fingerprint; compacts a torn or stale partial file."""
        if not self.partial.exists():
            return set()
        done: set[str] = set()
        keep: list[bytes] = []
        dirty = False
        with self.partial.open("rb") as fh:
            for raw in fh:
                record = _parse_record(raw)
                if record is None or record.get("fp") != self.fingerprint or record.get("id") in done:
                    dirty = True
                    continue
                done.add(record["id"])
                keep.append(raw)
        if dirty:
            tmp = self.partial.with_name(self.partial.name + ".tmp")
            with tmp.open("wb") as out:
                out.writelines(keep)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.partial)
        return done

    def open(self) -> None:
        self._partial_fh = self.partial.open("ab")
        self._errors_fh = self.errors.open("wb")

    def append_done(self, row: InputRow, conversation: Conversation) -> None:
        # The conversation goes last and verbatim, so assembling the output is a byte copy.
        head = _dumps({"id": row.row_id, "fp": self.fingerprint})[:-1]
        self._partial_fh.write(head + _CONV_KEY + _dumps(conversation.to_json_dict()) + b"}\n")
        self._partial_fh.flush()

    def append_failed(self, row: InputRow, error: RowError) -> None:
        record = {"id": row.row_id, "index": row.index, "line": row.line, "fp": self.fingerprint}
        record.update(error.to_json_dict())
        self._errors_fh.write(_dumps(record) + b"\n")
        self._errors_fh.flush()

    def close(self) -> None:
        for fh in (self._partial_fh, self._errors_fh):
            if fh is not None:
                fh.close()
        self._partial_fh = self._errors_fh = None

    def assemble(self, ordered_ids: Iterable[str], *, complete: bool) -> int:
        """Write the finished rows in input order to the output, atomically; return how many."""
        offsets: dict[str, int] = {}
        with self.partial.open("rb") as fh:
            pos = 0
            for raw in fh:
                record = _parse_record(raw)
                if record is not None and record.get("fp") == self.fingerprint:
                    offsets.setdefault(record["id"], pos)
                pos += len(raw)
        tmp = self.output.with_name(f".{self.output.name}.{os.getpid()}.tmp")
        written = 0
        try:
            with self.partial.open("rb") as src, tmp.open("wb") as out:
                for rid in ordered_ids:
                    offset = offsets.get(rid)
                    if offset is None:
                        continue
                    src.seek(offset)
                    out.write(_conversation_bytes(src.readline()) + b"\n")
                    written += 1
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.output)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        if complete:
            for leftover in (self.partial, self.errors):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
        elif self.errors.exists() and self.errors.stat().st_size == 0:
            self.errors.unlink()
        return written


_CONV_KEY = b',"conversation":'


def _dumps(obj: Any) -> bytes:
    return to_json(obj)


def _conversation_bytes(line: bytes) -> bytes:
    """The conversation JSON of a partial-file line (written last by ``append_done``)."""
    start = line.find(_CONV_KEY)  # ids are JSON-escaped, so the first match is the key
    return line[start + len(_CONV_KEY) : line.rstrip().rfind(b"}")]


def _parse_record(raw: bytes) -> dict[str, Any] | None:
    """The id and fingerprint of a partial-file line; None for a torn or foreign line."""
    if not raw.endswith(b"\n"):
        return None  # torn write
    cut = raw.find(_CONV_KEY)
    try:
        record = json.loads(raw[:cut] + b"}" if cut > 0 else raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "id" in record else None


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
        if isinstance(result, RowError):
            report.failed += 1
            if files is not None:
                files.append_failed(row, result)
        else:
            report.done += 1
            _count_usage(report, result)
            if files is not None:
                files.append_done(row, result)
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
