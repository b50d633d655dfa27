"""Reading Conversation JSONL with errors that name the file and line."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

from pydantic import ValidationError

from infermux.engines.images import resolve_relative_images
from infermux.errors import InputError
from infermux.jobs.row_settings import ROW_KEY, check_override
from infermux.jobs.tables import TableColumns, input_format, scan_table
from infermux.text import first_surrogate
from infermux.types import Conversation, Message, Tool

__all__ = [
    "EMPTY_ROW",
    "MAX_LINE_BYTES",
    "InputRow",
    "RowIds",
    "check_encodable",
    "is_plain_ascii",
    "iter_rows",
    "load_tools",
    "row_id_for",
    "tools_fingerprint",
    "unique_id",
    "validate_file",
    "with_default_tools",
]

MAX_LINE_BYTES = 64 * 1024 * 1024
# About 2M tokens, beyond the largest context windows offered today: a longer text is a data error.
MAX_TEXT_CHARS = int(os.environ.get("INFERMUX_MAX_MESSAGE_CHARS", 8_000_000))
_MAX_REPORTED = 5
EMPTY_ROW = "'messages' is empty: a conversation needs at least one message to answer."


# slots: one object per row (no __dict__), fewer for the GC to visit. Not frozen, though no one changes a row:
# a frozen dataclass's constructor costs three times as much, and every row of every job is built with it.
@dataclass(slots=True)
class InputRow:
    #: The row's place in its job's input, 0-based: the job's files index finished rows by it.
    index: int
    #: The line (or table row) the user sees, 1-based, for error messages.
    line: int
    row_id: str
    conversation: Conversation
    #: The digest of the row as the input has it, when ``conversation`` was completed from elsewhere (the
    #: default ``--tools``, which count through the fingerprint): see :func:`infermux.jobs.options.row_digest`.
    source_digest: str | None = None


def row_id_for(index: int, conversation_id: str | None, raw: bytes) -> str:
    """The row's id: its ``conversation_id``, else one derived from its position and content."""
    if conversation_id:
        return conversation_id
    return f"row-{index}-{hashlib.sha1(raw.strip()).hexdigest()[:12]}"


def unique_id(rid: str, seen: dict[str, int]) -> str:
    """``rid``, or ``rid#N`` for its N-th repeat in one input (ids must be unique for resume)."""
    seen[rid] = seen.get(rid, 0) + 1
    return rid if seen[rid] == 1 else f"{rid}#{seen[rid]}"


_DERIVED = re.compile(r"row-(\d+)-([0-9a-f]{12})")


class RowIds(Sequence[str]):
    """The row ids of an input, in order, as :func:`row_id_for` and :func:`unique_id` make them, kept in 7
    bytes per row when the id is derived from the row (no ``conversation_id``): its position is implicit
    and its content digest is 6 bytes. Given ids are kept as they are (and counted, to number repeats).

    Ids derived from different positions never repeat one another, so no set of every id is needed to
    number repeats: only a given id can repeat an earlier id, and a given id that looks derived
    (``row-<position>-<12 hex digits>``) is compared with the digest kept for that position.
    """

    def __init__(self) -> None:
        self._digests = bytearray()  # 6 bytes per position
        self._derived = bytearray()  # 1 where the position's id is derived from its content
        self._given: dict[str, int] = {}  # given id -> how many times it was given so far
        self._special: dict[int, str] = {}  # position -> its id, where it is not the derived one

    def add(self, index: int, conversation_id: str | None, raw: bytes) -> str:
        """The id of the row at ``index`` (the same as ``unique_id(row_id_for(...), seen)``)."""
        gap = index - len(self._derived)
        if gap > 0:  # positions of rows that failed their check
            self._derived += bytes(gap)
            self._digests += bytes(6 * gap)
        if conversation_id:
            rid = conversation_id
            count = self._given[rid] = self._given.get(rid, 0) + 1
            count += self._derived_match(rid, index)
            self._derived.append(0)
            self._digests += bytes(6)
        else:
            digest = hashlib.sha1(raw.strip()).digest()[:6]
            rid = f"row-{index}-{digest.hex()}"
            count = self._given.get(rid, 0) + 1
            self._derived.append(1)
            self._digests += digest
        if count == 1 and not conversation_id:
            return rid
        final = rid if count == 1 else f"{rid}#{count}"
        self._special[index] = final
        return final

    def _derived_match(self, rid: str, index: int) -> int:
        """1 when ``rid`` is the id derived for an earlier position, else 0."""
        match = _DERIVED.fullmatch(rid)
        if match is None:
            return 0
        position = int(match[1])
        if not (position < index and self._derived[position]):
            return 0
        return int(rid == f"row-{position}-{self._digests[6 * position : 6 * position + 6].hex()}")

    def __len__(self) -> int:
        return len(self._derived)

    @overload
    def __getitem__(self, position: int) -> str: ...
    @overload
    def __getitem__(self, position: slice) -> list[str]: ...
    def __getitem__(self, position: int | slice) -> str | list[str]:
        if isinstance(position, slice):
            return [self[i] for i in range(*position.indices(len(self)))]
        if position < 0:
            position += len(self)
        if not 0 <= position < len(self._derived):
            raise IndexError(position)
        special = self._special.get(position)
        if special is not None:
            return special
        return f"row-{position}-{self._digests[6 * position : 6 * position + 6].hex()}"

    def __iter__(self) -> Iterator[str]:
        for position in range(len(self._derived)):
            yield self[position]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RowIds({list(self)!r})"


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "enum" and loc.endswith("role"):
            msg = f"unknown role {err['input']!r}; use system, user, assistant or tool"
        elif err["type"] == "missing":
            msg = "missing"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def _parse(raw: bytes, path: str, line: int) -> Conversation:
    try:  # fast path: pydantic-core parses and validates the JSON in one go
        conv = Conversation.model_validate_json(raw)
    except ValidationError:
        conv = _parse_slow(raw, path, line)
    if not conv.messages:  # a Conversation may be empty (built step by step); a row to answer may not
        raise InputError(EMPTY_ROW, path=path, line=line)
    _check_size(conv, path, line)
    extra = conv.__pydantic_extra__
    if extra and ROW_KEY in extra:  # the row's own generation settings (infermux.jobs.row_settings)
        extra[ROW_KEY] = check_override(extra[ROW_KEY], path=path, line=line)
    return conv


def _parse_slow(raw: bytes, path: str, line: int) -> Conversation:
    """Parse again step by step to say precisely what is wrong with the line."""
    if len(raw) > MAX_LINE_BYTES:
        raise InputError(f"line is {len(raw)} bytes, over the {MAX_LINE_BYTES} byte limit.", path=path, line=line)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"not valid UTF-8 (byte {exc.start}). Re-encode the file as UTF-8.", path=path, line=line
        ) from None
    text = text.rstrip("\r\n")  # so that a column points into the line, not past its newline
    try:
        data = json.loads(text)
    except RecursionError:
        raise InputError("JSON nested too deeply to read. Flatten the line.", path=path, line=line) from None
    except json.JSONDecodeError as exc:
        where = "the line ends early" if exc.pos >= len(text.rstrip()) else f"at column {exc.colno}"
        raise InputError(
            f"not valid JSON ({exc.msg}; {where}). Each line must be one JSON object "
            'like {"messages": [{"role": "user", "content": "Hi"}]}.',
            path=path,
            line=line,
        ) from None
    if not isinstance(data, dict):
        raise InputError('each line must be a JSON object with a "messages" list.', path=path, line=line)
    if "messages" not in data:
        raise InputError('no "messages" field. Each line needs {"messages": [...]}.', path=path, line=line)
    try:
        return Conversation.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"not a valid conversation: {_explain(exc)}.", path=path, line=line) from None


def _check_size(conv: Conversation, path: str, line: int) -> None:
    for number, message in enumerate(conv.messages):
        for text in _texts(message):
            _check_encodable(text, number, path, line)
        if len(message.text) > MAX_TEXT_CHARS:
            raise InputError(
                f"messages.{number} has {len(message.text):,} characters of text, more than any model's "
                f"context ({MAX_TEXT_CHARS:,} allowed; INFERMUX_MAX_MESSAGE_CHARS changes the limit). "
                "Split or shorten it.",
                path=path,
                line=line,
            )


def check_encodable(conversation: Conversation, *, path: str, line: int | None = None) -> None:
    """Raise :class:`InputError` (naming ``path``, ``line`` and the message index) when a message cannot
    be encoded as UTF-8 for sending (its text, reasoning, tool calls or tool-call id)."""
    for number, message in enumerate(conversation.messages):
        for text in _texts(message):
            _check_encodable(text, number, path, line)


def is_plain_ascii(conversation: Conversation) -> bool:
    """Whether every message is ASCII text alone: the common row, which :func:`check_encodable` never
    rejects (a cheap test for callers that check rows one by one)."""
    for message in conversation.messages:
        content = message.content
        if not (type(content) is str and content.isascii()):
            return False
        if message.reasoning_content is not None or message.tool_call_id is not None or message.tool_calls:
            return False
    return True


def _texts(message: Message) -> Iterator[str]:
    if isinstance(message.content, str):
        yield message.content
    elif message.content is not None:
        yield from (i.content for i in message.content if i.content is not None)
    for value in (message.reasoning_content, message.tool_call_id):
        if value is not None:
            yield value
    for call in message.tool_calls or ():
        yield call.function.name
        yield call.function.arguments


def _check_encodable(text: str, number: int, path: str, line: int | None) -> None:
    """A lone UTF-16 surrogate (``"\\ud83d"`` alone: valid JSON, not valid UTF-8) cannot be sent."""
    if (at := first_surrogate(text)) is not None:
        raise InputError(
            f"messages.{number} has a lone UTF-16 surrogate \\u{ord(text[at]):04x} at character "
            f"{at} (half of an emoji or other character; no server can read it). Remove it or "
            "write the whole character.",
            path=path,
            line=line,
        )


def _lines(path: Path | str) -> Iterator[tuple[int, bytes]]:
    if isinstance(path, str):  # a URI (s3://...): streamed through pyarrow, see infermux.jobs.storage
        from infermux.jobs.storage import read_lines

        for number, raw in enumerate(read_lines(path), start=1):
            if raw.strip():
                yield number, raw
        return
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise InputError("input file not found. Check --input_path.", path=str(path)) from None
    except IsADirectoryError:
        raise InputError("is a directory; --input_path must be a JSONL file.", path=str(path)) from None
    except OSError as exc:
        raise InputError(f"cannot read the input file: {exc.strerror}.", path=str(path)) from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if raw.strip():
                yield number, raw


def _scan(
    path: Path | str, columns: TableColumns | None = None, ids: RowIds | None = None
) -> Iterator[InputRow | InputError]:
    """The rows of ``path`` (or an error per bad row); their ids are made by ``ids`` (a new :class:`RowIds`
    when not given), which then holds them."""
    ids = RowIds() if ids is None else ids
    fmt = input_format(path, columns.input_format if columns else None)
    if fmt != "jsonl":  # Parquet or an Arrow dataset folder: see infermux.jobs.tables
        yield from scan_table(path, fmt, columns or TableColumns(), ids)
        return
    if columns is not None and columns.maps_columns:
        raise InputError(
            "--prompt_column, --system_prompt, --system_column, --id_column and --generation_column apply to "
            "tables (Parquet, dataset folders); JSONL rows carry their own messages, conversation_id and "
            "generation.",
            path=_shown(path),
        )
    index = 0
    where = _shown(path)
    # Relative image paths name files beside the input file, wherever the job runs from.
    folder = path.parent.absolute() if isinstance(path, Path) else None
    for number, raw in _lines(path):
        try:
            conv = _parse(raw, where, number)
        except InputError as exc:
            yield exc
            continue
        if folder is not None and conv.has_images:
            conv = resolve_relative_images(conv, folder)
        rid = ids.add(index, conv.conversation_id, raw)
        yield InputRow(index=index, line=number, row_id=rid, conversation=conv)
        index += 1


def with_default_tools(rows: Iterable[InputRow], tools: Sequence[Tool] | None) -> Iterator[InputRow]:
    """``rows``, each row without ``tools`` given ``tools`` (the CLI's ``--tools FILE``)."""
    from infermux.jobs.options import request_digest

    for row in rows:
        if tools and not row.conversation.tools:
            conversation = row.conversation.model_copy(update={"tools": list(tools)})
            row = dataclasses.replace(row, conversation=conversation, source_digest=request_digest(row.conversation))
        yield row


def tools_fingerprint(fingerprint: str, tools: Sequence[Tool]) -> str:
    """``fingerprint`` combined with default ``tools`` (they change answers, so they count for resume)."""
    blob = json.dumps([t.to_json_dict() for t in tools], sort_keys=True)
    return hashlib.sha256(f"{fingerprint}|{blob}".encode()).hexdigest()[:16]


def load_tools(path: str | Path) -> list[Tool]:
    """The JSON list of OpenAI-style function tools in ``path`` (``--tools FILE``)."""
    where = str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("tools file not found. Check --tools.", path=where) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the tools file: {exc}.", path=where) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno}).", path=where) from None
    if isinstance(data, dict) and isinstance(data.get("tools"), list):
        data = data["tools"]
    if not isinstance(data, list) or not data:
        raise InputError(
            'expected a non-empty JSON list of tools like [{"type": "function", "function": {"name": "get_weather", '
            '"parameters": {...}}}].',
            path=where,
        )
    tools: list[Tool] = []
    for number, item in enumerate(data):
        try:
            tools.append(Tool.model_validate(item))
        except ValidationError as exc:
            raise InputError(f"tool {number}: {_explain(exc)}.", path=where) from None
    return tools


def iter_rows(path: str | Path, columns: TableColumns | None = None) -> Iterator[InputRow]:
    """Stream the rows of a Conversation JSONL file (blank lines skipped) or a table (``columns`` says how
    its columns become conversations, see :mod:`infermux.jobs.tables`); raise on a bad line or row."""
    for item in _scan(_local_or_uri(path), columns):
        if isinstance(item, InputError):
            raise item
        yield item


def validate_file(
    path: str | Path, *, on_row: Callable[[InputRow], None] | None = None, columns: TableColumns | None = None
) -> RowIds:
    """Check every line (or table row) of ``path``; return the row ids in order (:class:`RowIds`: a
    sequence of strings, 7 bytes per derived id), or raise one error listing bad lines.

    ``on_row`` sees each valid row during the same pass (to learn, say, whether any row offers tools).
    """
    path = _local_or_uri(path)
    ids = RowIds()
    problems: list[InputError] = []
    for item in _scan(path, columns, ids):
        if isinstance(item, InputError):
            problems.append(item)
        else:
            if on_row is not None:
                on_row(item)
    if problems:
        shown = "\n  ".join(str(p) for p in problems[:_MAX_REPORTED])
        more = f"\n  ... and {len(problems) - _MAX_REPORTED} more" if len(problems) > _MAX_REPORTED else ""
        what = "line(s)" if problems[0].line is not None else "row(s)"
        raise InputError(f"{len(problems)} invalid {what} in the input; nothing was run:\n  {shown}{more}")
    if not ids:
        raise InputError("the input has no conversations.", path=_shown(path))
    return ids


def _local_or_uri(path: str | Path) -> Path | str:
    """A local input as a Path; a URI (``s3://...``) stays a string (a Path would fold its ``//``)."""
    from infermux.jobs.storage import is_uri

    return path if isinstance(path, str) and is_uri(path) else Path(path)


def _shown(path: Path | str) -> str:
    if isinstance(path, str):
        from infermux.jobs.storage import shown

        return shown(path)
    return str(path)
