"""Table inputs: Parquet (a file, a folder of parts, a URI) and Hugging Face ``save_to_disk`` folders.

Tables are read one row group (Parquet) or one record batch (Arrow) at a time through pyarrow, so memory
stays flat however many rows there are; ``datasets`` is never imported. Each row becomes an
:class:`~infermux.jobs.rows.InputRow`:

* a ``messages`` column (a list of role/content structs, or JSON text) is the conversation as is;
* otherwise ``prompt_column`` is the user message, with ``system_prompt`` or ``system_column`` as the
  system message;
* ``id_column`` (else a ``conversation_id`` column) is the row id that resume uses; without one the id is
  derived from the row's position and content, as for JSONL;
* the other columns are carried to the output: in ``metadata`` of a JSONL output, unchanged (same types)
  in a Parquet output (:mod:`infermux.jobs.table_out`).

Errors name the file, the row group (or record batch) and row, and the column, and say how to fix them.
pyarrow is imported only when a table is read (``infermux[storage]``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from infermux.errors import InputError, install_hint
from infermux.jobs.row_settings import ROW_KEY, check_override
from infermux.types import Conversation

if TYPE_CHECKING:
    from infermux.configs.inference_config import InferenceConfig
    from infermux.jobs.rows import RowIds

__all__ = [
    "INPUT_FORMATS",
    "TableColumns",
    "input_format",
    "scan_table",
    "table_batches",
    "table_columns",
]

INPUT_FORMATS = ("jsonl", "parquet", "dataset")
_ARROW_STATE = "state.json"
_PIECE_ROWS = 10_000
_ROWS_AT_ONCE = 256  # rows turned into Python objects at once (see _records)


@dataclass(frozen=True)
class TableColumns:
    """How a table's columns become conversations (all optional; ``messages`` is used when present)."""

    input_format: str | None = None
    prompt_column: str | None = None
    system_prompt: str | None = None
    system_column: str | None = None
    id_column: str | None = None
    #: The column of each row's generation settings (default: a ``generation`` column, if any).
    generation_column: str | None = None

    @property
    def maps_columns(self) -> bool:
        return any((self.prompt_column, self.system_prompt, self.system_column, self.id_column, self.generation_column))

    def fingerprint(self, fingerprint: str) -> str:
        """``fingerprint`` combined with the mapping (it changes prompts or row ids, so it counts for resume)."""
        from infermux.configs.fingerprint import columns_fingerprint

        return columns_fingerprint(
            fingerprint, [self.prompt_column, self.system_prompt, self.system_column, self.id_column]
        )

    @classmethod
    def of(cls, config: InferenceConfig) -> TableColumns:
        """The mapping a config names (``prompt_column``, ...)."""
        prompt, system, system_column, id_column = config.column_mapping()
        return cls(config.input_format, prompt, system, system_column, id_column, config.generation_column)


def input_format(path: str | Path, given: str | None = None) -> str:
    """``jsonl``, ``parquet`` or ``dataset``: ``given`` (``--input_format``), else from the path: a
    ``.parquet`` file or a folder of them, a ``save_to_disk`` folder (``state.json``), else JSONL."""
    if given:
        fmt = given.strip().lower()
        if fmt not in INPUT_FORMATS:
            raise InputError(f"unknown --input_format {given!r}; use one of {', '.join(INPUT_FORMATS)}.")
        return fmt
    text = str(path).split("?", 1)[0].rstrip("/")
    if text.endswith((".parquet", ".pq")):
        return "parquet"
    if text.endswith(".arrow"):
        return "dataset"
    if "://" in text:  # a URI prefix of parts is named with --input_format parquet
        return "jsonl"
    local = Path(text)
    if local.is_dir():
        if (local / _ARROW_STATE).is_file():
            return "dataset"
        if (local / "dataset_dict.json").is_file():
            splits = ", ".join(sorted(p.name for p in local.iterdir() if p.is_dir())) or "none found"
            raise InputError(
                f"is a DatasetDict folder; give one split's folder as --input_path (splits: {splits}).", path=text
            )
        return "parquet"
    return "jsonl"


def _pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError:
        raise InputError(
            "Parquet and Arrow tables are read through pyarrow, which is not installed. Install it with: "
            + install_hint("storage")
        ) from None
    return pyarrow


def _filesystem(path: str) -> tuple[Any, str, str]:
    """The pyarrow file system of ``path``, the path on it, and ``path`` as shown in messages."""
    from infermux.jobs.storage import is_uri, open_remote, shown

    if is_uri(path):
        remote = open_remote(path)
        return remote.fs, remote.path, shown(path)
    from pyarrow import fs as pafs

    return pafs.LocalFileSystem(), str(Path(path).resolve()), path


def _files(fs: Any, root: str, where: str, fmt: str) -> list[tuple[str, str]]:
    """The data files of the table at ``root`` in order, with the name each is shown under."""
    from pyarrow import fs as pafs

    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise InputError("input not found. Check --input_path.", path=where)
    if info.type == pafs.FileType.File:
        return [(root, where)]
    if fmt == "dataset":
        names = _arrow_files(fs, root, where)
    else:
        selector = pafs.FileSelector(root, recursive=True)
        names = sorted(
            i.path[len(root) :].lstrip("/")
            for i in fs.get_file_info(selector)
            if i.type == pafs.FileType.File and i.path.endswith((".parquet", ".pq"))
            and not any(part.startswith(("_", ".")) for part in i.path[len(root) :].split("/"))
        )  # fmt: skip
    if not names:
        kind = "Arrow (.arrow)" if fmt == "dataset" else "Parquet (.parquet)"
        raise InputError(f"the folder has no {kind} files. Check --input_path or --input_format.", path=where)
    return [(f"{root.rstrip('/')}/{name}", f"{where.rstrip('/')}/{name}") for name in names]


def _arrow_files(fs: Any, root: str, where: str) -> list[str]:
    """The Arrow files of a ``save_to_disk`` folder, in the order its ``state.json`` lists them."""
    from pyarrow import fs as pafs

    state = f"{root.rstrip('/')}/{_ARROW_STATE}"
    if fs.get_file_info(state).type == pafs.FileType.File:
        with fs.open_input_stream(state) as fh:
            try:
                data = json.loads(fh.read())
                return [str(item["filename"]) for item in data["_data_files"]]
            except (ValueError, KeyError, TypeError):
                raise InputError(
                    f"{_ARROW_STATE} is not a Hugging Face save_to_disk state file (no _data_files list). "
                    "Save the dataset again with Dataset.save_to_disk.",
                    path=where,
                ) from None
    selector = pafs.FileSelector(root)
    return sorted(i.base_name for i in fs.get_file_info(selector) if i.base_name.endswith(".arrow"))


def table_batches(path: str | Path, fmt: str) -> Iterator[tuple[str, str, int, Any]]:
    """``(file shown, "row group N" | "record batch N", first row's number in it, pyarrow.RecordBatch)`` in
    input order; a row group is read in pieces of at most 10,000 rows."""
    pa = _pyarrow()
    fs, root, where = _filesystem(str(path))
    for name, shown_name in _files(fs, root, where, fmt):
        try:
            if fmt == "dataset":
                yield from _arrow_batches(pa, fs, name, shown_name)
            else:
                import pyarrow.parquet as pq

                with fs.open_input_file(name) as fh:
                    parquet = pq.ParquetFile(fh)
                    for group in range(parquet.num_row_groups):
                        start = 0
                        for batch in parquet.iter_batches(batch_size=_PIECE_ROWS, row_groups=[group]):
                            yield shown_name, f"row group {group}", start, batch
                            start += batch.num_rows
        except (pa.ArrowInvalid, OSError) as exc:
            what = "an Arrow file (save_to_disk)" if fmt == "dataset" else "a Parquet file"
            raise InputError(
                f"not readable as {what} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}). "
                "Check the file, or --input_format.",
                path=shown_name,
            ) from None


def _arrow_batches(pa: Any, fs: Any, name: str, shown_name: str) -> Iterator[tuple[str, str, int, Any]]:
    with fs.open_input_file(name) as fh:
        try:
            reader = pa.ipc.open_stream(fh)  # save_to_disk writes the Arrow stream format
        except pa.ArrowInvalid:
            fh.seek(0)
            file_reader = pa.ipc.open_file(fh)
            for number in range(file_reader.num_record_batches):
                yield shown_name, f"record batch {number}", 0, file_reader.get_batch(number)
            return
        for number, batch in enumerate(reader):
            yield shown_name, f"record batch {number}", 0, batch


def table_columns(path: str | Path, fmt: str) -> list[str]:
    """The column names of the table's first file (to check a mapping before reading rows)."""
    for _, _, _, batch in table_batches(path, fmt):
        return list(batch.schema.names)
    return []


def scan_table(path: str | Path, fmt: str, columns: TableColumns, ids: RowIds | None = None) -> Iterator[Any]:
    """The table's rows as :class:`~infermux.jobs.rows.InputRow`, or an :class:`InputError` per bad row;
    ``ids`` makes their ids (and then holds them)."""
    from pydantic_core import to_json

    from infermux.jobs.rows import InputRow, RowIds, check_encodable, is_plain_ascii

    ids = RowIds() if ids is None else ids
    index = 0
    layouts: dict[tuple[str, ...], _Layout] = {}
    for file, group, start, batch in table_batches(path, fmt):
        names = tuple(batch.schema.names)
        layout = layouts.get(names)
        if layout is None:
            _check_mapping(names, columns, file)
            layout = layouts[names] = _Layout.of(names, columns)
        for number, record in _records(batch, start):
            where = f"{file} ({group}, row {number})"
            try:
                conv, given_id = _conversation(record, columns, layout, where)
                if not is_plain_ascii(conv):  # the common row needs no check
                    check_encodable(conv, path=where)
            except InputError as exc:
                yield exc
                index += 1
                continue
            raw = b"" if given_id else to_json(record, fallback=str)  # the row's cells, in column order
            rid = ids.add(index, given_id, raw)
            yield InputRow(index=index, line=index + 1, row_id=rid, conversation=conv)
            index += 1


def _records(batch: Any, start: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """The rows of ``batch`` as dicts, numbered from ``start``, made a few hundred at a time: a whole
    piece's rows made at once outlive the young garbage collections and make full ones run (1,000,000 rows
    of one column: 1.8 s, 1.1 of them collecting, against 0.5 s)."""
    for offset in range(0, batch.num_rows, _ROWS_AT_ONCE):
        yield from enumerate(batch.slice(offset, _ROWS_AT_ONCE).to_pylist(), start=start + offset)


_ROLE_HINT = 'a list of {"role": ..., "content": ...} items (structs, or the same as JSON text)'


def _check_mapping(names: tuple[str, ...], columns: TableColumns, file: str) -> None:
    listed = ", ".join(names) or "none"
    for option, column in (
        ("--prompt_column", columns.prompt_column),
        ("--system_column", columns.system_column),
        ("--id_column", columns.id_column),
        ("--generation_column", columns.generation_column),
    ):
        if column and column not in names:
            raise InputError(f"no column {column!r} for {option} (columns: {listed}).", path=file)
    if (columns.system_prompt or columns.system_column) and not columns.prompt_column:
        raise InputError(
            "--system_prompt and --system_column go with --prompt_column; a 'messages' column carries its own "
            "system message.",
            path=file,
        )
    if columns.prompt_column is None and "messages" not in names:
        raise InputError(
            f"no 'messages' column; name the column that holds each prompt with --prompt_column (columns: {listed}).",
            path=file,
        )
    if columns.system_prompt and columns.system_column:
        raise InputError("give --system_prompt or --system_column, not both.", path=file)


@dataclass(frozen=True)
class _Layout:
    """What a table's columns are for, worked out once per schema rather than once per row."""

    id_column: str | None
    settings_column: str | None
    carried: tuple[str, ...]  # the other columns, in column order: the row's metadata

    @classmethod
    def of(cls, names: tuple[str, ...], columns: TableColumns) -> _Layout:
        id_column = columns.id_column or ("conversation_id" if "conversation_id" in names else None)
        settings_column = columns.generation_column or (ROW_KEY if ROW_KEY in names else None)
        used = {columns.prompt_column, columns.system_column, id_column, settings_column}
        if not columns.prompt_column:
            used.add("messages")
        return cls(id_column, settings_column, tuple(n for n in names if n not in used))


def _conversation(
    record: dict[str, Any], columns: TableColumns, layout: _Layout, where: str
) -> tuple[Conversation, str | None]:
    given_id = None
    if layout.id_column:
        value = record.get(layout.id_column)
        if value is None or value == "":
            if columns.id_column:
                raise InputError(
                    f"column {layout.id_column!r} (--id_column) is empty; every row needs an id.", path=where
                )
        else:
            given_id = str(value)
    if columns.prompt_column:
        messages = _prompt_messages(record, columns, where)
    else:
        messages = _messages_column(record["messages"], where)
    # Fields left out take their defaults (no id, no metadata): the same conversation, validated faster.
    row: dict[str, Any] = {"messages": messages}
    if given_id is not None:
        row["conversation_id"] = given_id
    if layout.settings_column is not None:  # the row's own generation settings (infermux.jobs.row_settings)
        value = record.get(layout.settings_column)
        if value is not None and value != "":
            row[ROW_KEY] = check_override(value, path=where, what=layout.settings_column)
    if layout.carried:
        row["metadata"] = {name: record[name] for name in layout.carried}
    try:
        conv = Conversation.model_validate(row)
    except ValidationError as exc:
        from infermux.jobs.rows import _explain as explain

        raise InputError(f"column 'messages': not a valid conversation: {explain(exc)}.", path=where) from None
    if not conv.messages:
        raise InputError("column 'messages' is empty: a conversation needs at least one message.", path=where)
    return conv, given_id


def _prompt_messages(record: dict[str, Any], columns: TableColumns, where: str) -> list[dict[str, Any]]:
    assert columns.prompt_column is not None
    prompt = record.get(columns.prompt_column)
    if not isinstance(prompt, str) or not prompt:
        what = "empty" if prompt is None or prompt == "" else f"not text ({type(prompt).__name__})"
        raise InputError(
            f"column {columns.prompt_column!r} (--prompt_column) is {what}; each row needs a prompt string.",
            path=where,
        )
    system = columns.system_prompt
    if columns.system_column:
        value = record.get(columns.system_column)
        if value is not None and not isinstance(value, str):
            raise InputError(
                f"column {columns.system_column!r} (--system_column) is not text ({type(value).__name__}).",
                path=where,
            )
        system = value or None
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    return messages


def _messages_column(value: Any, where: str) -> Any:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise InputError(
                f"column 'messages' is not valid JSON ({exc}); it must be {_ROLE_HINT}.", path=where
            ) from None
    if not isinstance(value, list):
        raise InputError(f"column 'messages' must be {_ROLE_HINT}.", path=where)
    # Struct columns give every field of every item, absent ones as null: drop those so defaults apply
    # (an item with every field set is kept as it is).
    return [
        {k: v for k, v in m.items() if v is not None} if isinstance(m, dict) and None in m.values() else m
        for m in value
    ]
