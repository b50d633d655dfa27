"""``infermux convert INPUT OUTPUT``: JSONL, Parquet and dataset folders into one another, row for row.

Formats follow the paths as for a job (:func:`~infermux.jobs.tables.input_format`,
:func:`~infermux.jobs.table_out.output_format`), or are given. Rows stream through in pieces of at most
10,000, so memory stays flat:

* a table (Parquet, dataset folder) is read one row group or record batch at a time; into JSONL each row
  becomes one JSON object (bytes as base64, dates and other values as text);
* JSONL into a table is read twice: once to learn the columns' types over every row (a struct gains the
  fields any row has; a column empty in some rows takes the others' type), then to write them.

The output is written into a temporary file (or folder) beside it and moved into place at the end, like a
job's output. Nothing here calls a model: the rows are copied, not checked as conversations.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from infermux.errors import InputError, OutputError
from infermux.jobs.files import fsync_path
from infermux.jobs.tables import _pyarrow, input_format, table_batches

__all__ = ["ConvertReport", "convert"]

_PIECE = 10_000


class ConvertReport:
    def __init__(self, rows: int, input_format: str, output_format: str, output: str) -> None:
        self.rows, self.input_format, self.output_format, self.output = rows, input_format, output_format, output


def convert(
    input_path: str, output_path: str, *, input_format_name: str | None = None, output_format_name: str | None = None
) -> ConvertReport:
    """Copy the rows of ``input_path`` into ``output_path`` in the output's format; return what was done."""
    from infermux.jobs.api import check_output_path
    from infermux.jobs.storage import is_uri
    from infermux.jobs.table_out import output_format

    source = input_format(input_path, input_format_name)
    target = output_format(output_path, output_format_name)
    if is_uri(output_path):
        raise OutputError(f"{output_path}: convert writes a local path; copy the result to the object store after.")
    check_output_path(output_path, input_path)
    output = Path(output_path)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    from infermux.jobs.dataset_out import DatasetJobFiles

    try:
        if target == "jsonl":
            rows = _write_jsonl(_table_rows(input_path, source) if source != "jsonl" else _json_rows(input_path), tmp)
            os.replace(tmp, output)
        else:
            rows = _write_table(input_path, source, target, tmp)
            fsync_path(tmp)
            if target == "dataset":
                DatasetJobFiles.install(tmp, output)
            else:
                os.replace(tmp, output)
    finally:
        DatasetJobFiles.discard_output(tmp)
    return ConvertReport(rows, source, target, str(output))


def _json_rows(path: str) -> Iterator[tuple[int, Any]]:
    """``(line number, the JSON object)`` of each non-blank line."""
    from infermux.jobs.rows import _lines, _local_or_uri, _shown

    where = _local_or_uri(path)
    for number, raw in _lines(where):
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise InputError(f"not valid JSON ({exc}).", path=_shown(where), line=number) from None
        if not isinstance(value, dict):
            raise InputError("each line must be a JSON object to become a table row.", path=_shown(where),
                             line=number)  # fmt: skip
        yield number, value


def _table_rows(path: str, fmt: str) -> Iterator[tuple[int, Any]]:
    number = 0
    for _, _, _, batch in table_batches(path, fmt):
        for record in batch.to_pylist():
            number += 1
            yield number, record


def _write_jsonl(rows: Iterator[tuple[int, Any]], tmp: Path) -> int:
    from pydantic_core import to_json

    count = 0
    with tmp.open("wb") as out:
        for _, record in rows:
            out.write(to_json(record, bytes_mode="base64", fallback=str) + b"\n")
            count += 1
        out.flush()
        os.fsync(out.fileno())
    return count


def _write_table(path: str, source: str, target: str, tmp: Path) -> int:
    pa = _pyarrow()
    if source == "jsonl":
        schema = _jsonl_schema(path)
        pieces: Iterator[Any] = (table.cast(schema) for table in _jsonl_tables(path, schema))
    else:
        pieces = (pa.Table.from_batches([batch]) for _, _, _, batch in table_batches(path, source))
        schema = None
    writer: Any = None
    count = 0
    try:
        for table in pieces:
            if writer is None:
                writer = _open(target, tmp, schema or table.schema)
            elif table.schema != writer.schema:
                table = table.cast(writer.schema)
            writer.write_table(table)
            count += table.num_rows
        if writer is None:
            raise InputError("the input has no rows to convert.", path=path)
    finally:
        if writer is not None:
            writer.close()
    return count


def _open(target: str, tmp: Path, schema: Any) -> Any:
    if target == "dataset":
        from infermux.jobs.dataset_out import ArrowFolderWriter

        return ArrowFolderWriter(tmp, schema, "convert")
    import pyarrow.parquet as pq

    return pq.ParquetWriter(str(tmp), schema)


def _jsonl_tables(path: str, schema: Any = None) -> Iterator[Any]:
    """The JSONL rows as pyarrow tables of at most 10,000 rows (typed by ``schema`` where given)."""
    pa = _pyarrow()
    rows = _json_rows(path)
    while piece := list(islice(rows, _PIECE)):
        # a struct array takes the keys of every row (a table from a list of rows, only the first row's)
        kind = pa.struct(list(schema)) if schema is not None else None
        with _one_table(path, f"lines {piece[0][0]}-{piece[-1][0]}"):
            table = pa.Table.from_struct_array(pa.array([record for _, record in piece], type=kind))
        yield table


def _jsonl_schema(path: str) -> Any:
    """The columns of every JSONL row, unified (the first pass)."""
    pa = _pyarrow()
    schema = None
    for table in _jsonl_tables(path):
        with _one_table(path, "the lines"):
            schema = table.schema if schema is None else pa.unify_schemas([schema, table.schema],
                                                                           promote_options="permissive")  # fmt: skip
    if schema is None:
        raise InputError("the input has no rows to convert.", path=path)
    return schema


@contextlib.contextmanager
def _one_table(path: str, what: str) -> Iterator[None]:
    """Turn pyarrow's refusal to type ``what`` as one table into an :class:`InputError` that says why."""
    pa = _pyarrow()
    try:
        yield
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputError(
            f"{what} cannot be one table: {str(exc).splitlines()[0]}. A column must hold the same kind of value "
            "on every line (text, number, list or object).",
            path=path,
        ) from None
