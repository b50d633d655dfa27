"""Parquet output: the input's columns plus the answer columns, in input order.

A Parquet job keeps the JSONL job's durable state unchanged: each row is appended to the partial file as
it finishes (so resume, the errors file, the answer cache and ``--dry-run`` work as for JSONL), and when
the job ends the output is assembled in input order into a temporary Parquet file, one row group per
10,000 rows at most (fewer where an input row group or record batch ends), which is moved into place
with ``os.replace`` (or uploaded, for a URI), like the JSONL output.

Columns: every input column, unchanged and with its type (a JSONL input gives ``conversation_id`` and
``conversation``, the input conversation as JSON text), then :data:`ANSWER_COLUMNS`. A failed row is
kept with ``error`` set (its ``kind`` and ``message`` as JSON text) and no answer; a row not run yet
(budget, interrupted job) is left out until a rerun answers it.
"""

from __future__ import annotations

import contextlib
import json
import os
from array import array
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic_core import from_json

from infermux.errors import OutputError
from infermux.jobs.files import JobFiles, _conversation_bytes, id_and_digest
from infermux.jobs.tables import TableColumns, input_format, table_batches, table_columns
from infermux.types import FinishReason, Message, Usage

if TYPE_CHECKING:
    from infermux.jobs.finished import IndexWriter

__all__ = ["ANSWER_COLUMNS", "OUTPUT_FORMATS", "ParquetJobFiles", "job_files", "output_format"]

OUTPUT_FORMATS = ("jsonl", "parquet", "dataset")
ANSWER_COLUMNS = ("answer", "finish_reason", "prompt_tokens", "completion_tokens", "cost_usd", "error")
_JSONL_CHUNK = 10_000
_ROWS_AT_ONCE = 256


def output_format(path: str | os.PathLike[str], given: str | None = None) -> str:
    """``given`` (``--output_format``), else ``parquet`` for a path ending in ``.parquet``, ``dataset`` for a
    path ending in ``/`` or a ``save_to_disk`` folder already there, else ``jsonl``."""
    if given:
        fmt = given.strip().lower()
        if fmt not in OUTPUT_FORMATS:
            raise OutputError(f"unknown --output_format {given!r}; use one of {', '.join(OUTPUT_FORMATS)}.")
        return fmt
    text = str(path).split("?", 1)[0]
    if text.rstrip("/").endswith((".parquet", ".pq")):
        return "parquet"
    if "://" not in text and (text.endswith(("/", os.sep)) or Path(text, "state.json").is_file()):
        return "dataset"
    return "jsonl"


def job_files(
    output_path: str | os.PathLike[str],
    fingerprint: str,
    *,
    job_dir: str | os.PathLike[str] | None = None,
    input_path: str | Path | None = None,
    columns: TableColumns | None = None,
    output_format_name: str | None = None,
) -> JobFiles:
    """The job files for ``output_path``: :class:`ParquetJobFiles` for a Parquet output, else JSONL."""
    fmt = output_format(output_path, output_format_name)
    if fmt == "jsonl":
        return JobFiles(output_path, fingerprint, job_dir=job_dir)
    if input_path is None:
        raise OutputError(f"a {fmt} output is assembled from a file input; write JSONL for in-memory rows.")
    if fmt == "dataset":
        from infermux.jobs.dataset_out import DatasetJobFiles

        return DatasetJobFiles(output_path, fingerprint, job_dir=job_dir, input_path=input_path, columns=columns)
    return ParquetJobFiles(output_path, fingerprint, job_dir=job_dir, input_path=input_path, columns=columns)


class ParquetJobFiles(JobFiles):
    """:class:`JobFiles` whose output is a Parquet table (see the module docstring)."""

    output_holds_records = False

    def __init__(
        self,
        output_path: str | os.PathLike[str],
        fingerprint: str,
        *,
        job_dir: str | os.PathLike[str] | None = None,
        input_path: str | Path,
        columns: TableColumns | None = None,
    ) -> None:
        super().__init__(output_path, fingerprint, job_dir=job_dir)
        self.input_path = str(input_path)
        self.columns = columns or TableColumns()
        self.input_format = input_format(self.input_path, self.columns.input_format)

    def check_writable(self) -> None:
        super().check_writable()
        if self.input_format != "jsonl":
            clash = [c for c in table_columns(self.input_path, self.input_format) if c in ANSWER_COLUMNS]
            if clash:
                raise OutputError(
                    f"{self.destination}: the input already has column(s) {', '.join(clash)}, which the Parquet "
                    f"output adds ({', '.join(ANSWER_COLUMNS)}). Rename them, or write JSONL (--output_format jsonl)."
                )

    def write_output(self, ordered_ids: Sequence[str], tmp: Path, index: IndexWriter | None = None) -> int:
        import pyarrow as pa

        done = self.positions(ordered_ids).at
        errors = self._errors(len(ordered_ids))
        types = (pa.string(), pa.string(), pa.int64(), pa.int64(), pa.float64(), pa.string())
        writer: Any = None
        written = 0
        with self.partial.open("rb") as src, _open_or_none(self.errors if errors is not None else None) as failed:
            try:
                for table, start in self._input_pieces():
                    # Column by column, a few hundred rows at a time: a piece's answers kept as one tuple per
                    # row would be 10,000 objects the garbage collector keeps scanning (strings and numbers in
                    # lists are not tracked).
                    values: list[list[Any]] = [[] for _ in ANSWER_COLUMNS]
                    recent: list[tuple[Any, ...]] = []
                    keep = []
                    for position in range(start, start + table.num_rows):
                        offset = done[position] if position < len(done) else -1
                        line = None
                        if offset >= 0:
                            src.seek(offset)
                            line = src.readline()
                            if index is not None:
                                index.add(*id_and_digest(line))
                        error = _error(failed, errors[position]) if errors is not None and line is None else None
                        row = _answer(line, error)
                        keep.append(row is not None)
                        if row is not None:
                            recent.append(row)
                            if len(recent) == _ROWS_AT_ONCE:
                                _extend(values, recent)
                    _extend(values, recent)
                    rows = len(values[0])
                    if not rows:
                        continue
                    table = table.filter(pa.array(keep)) if rows < len(keep) else table
                    for name, kind, column in zip(ANSWER_COLUMNS, types, values, strict=True):
                        table = table.append_column(name, pa.array(column, type=kind))
                    if writer is None:
                        writer = self.open_writer(tmp, table.schema)
                    elif table.schema != writer.schema:
                        table = table.cast(writer.schema)
                    writer.write_table(table)
                    written += rows
                if writer is None:  # nothing finished: an empty table with the answer columns
                    empty = pa.table({n: pa.array([], type=t) for n, t in zip(ANSWER_COLUMNS, types, strict=True)})
                    writer = self.open_writer(tmp, empty.schema)
            finally:
                if writer is not None:
                    writer.close()
        return written

    def open_writer(self, tmp: Path, schema: Any) -> Any:
        """The writer of the assembled output at ``tmp`` (``schema``, ``write_table``, ``close``)."""
        import pyarrow.parquet as pq

        return pq.ParquetWriter(str(tmp), schema)

    def _input_pieces(self) -> Iterator[tuple[Any, int]]:
        """The input in order, as (pyarrow table of its columns, the position of its first row)."""
        import pyarrow as pa

        start = 0
        if self.input_format != "jsonl":
            for _, _, _, batch in table_batches(self.input_path, self.input_format):
                table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
                yield table, start
                start += table.num_rows
            return
        from infermux.jobs.rows import iter_rows

        rows = iter_rows(self.input_path)
        while chunk := list(islice(rows, _JSONL_CHUNK)):
            table = pa.table({
                "conversation_id": pa.array([row.conversation.conversation_id for row in chunk], type=pa.string()),
                "conversation": pa.array([row.conversation.to_json() for row in chunk], type=pa.string()),
            })  # fmt: skip
            yield table, start
            start += len(chunk)

    def _errors(self, total: int) -> array[int] | None:
        """Input position → the offset of its line in the errors file (of the rows that failed in this run,
        the last line wins), -1 for none; None when nothing failed."""
        if not self.errors.exists() or not self.errors.stat().st_size:
            return None
        found = array("q", [-1]) * total
        with self.errors.open("rb") as fh:
            pos = 0
            for raw in fh:
                try:
                    position = json.loads(raw).get("index")
                except (ValueError, AttributeError):
                    position = None
                if isinstance(position, int) and 0 <= position < total:
                    found[position] = pos
                pos += len(raw)
        return found


def _extend(values: list[list[Any]], rows: list[tuple[Any, ...]]) -> None:
    """Move ``rows`` (answer tuples) onto the ends of the columns in ``values``."""
    for column, cells in zip(values, zip(*rows, strict=True), strict=False):  # no rows: no cells
        column.extend(cells)
    rows.clear()


@contextlib.contextmanager
def _open_or_none(path: Path | None) -> Iterator[Any]:
    if path is None:
        yield None
        return
    with path.open("rb") as fh:
        yield fh


def _error(failed: Any, offset: int) -> str | None:
    """The error (JSON text) of the errors-file line at ``offset``; None for -1."""
    if offset < 0:
        return None
    failed.seek(offset)
    record = json.loads(failed.readline())
    error = {k: v for k, v in record.items() if k not in ("id", "index", "line", "fp")}
    return json.dumps(error, ensure_ascii=False)


def _answer(line: bytes | None, error: str | None) -> tuple[Any, ...] | None:
    """The answer columns of one row (``line``: its partial-file line), in :data:`ANSWER_COLUMNS` order, or
    None when it has neither an answer nor an error."""
    if line is None:
        if error is None:
            return None
        return None, None, None, None, None, error
    data = from_json(_conversation_bytes(line))  # written by infermux: plain JSON, no pydantic pass
    messages = data.get("messages") or [{}]
    last = messages[-1]
    answer = None
    if last.get("role") == "assistant":
        content = last.get("content")
        answer = content if isinstance(content, str) else Message.model_validate(last).text
    metadata = data.get("metadata") or {}
    tokens = Usage.stored_counts(metadata.get("usage"))
    reason = FinishReason.parse(metadata.get("finish_reason"))
    cost = metadata.get("cost_usd")
    return (
        answer,
        reason.value if reason is not None else None,
        *tokens,
        float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None,
        None,
    )
