"""The job facade: what the CLI, ``engine.infer`` (and next ``serve`` and a Ray runner) call.

Shapes
------
* :func:`prepare_input` ``(input_path) -> Sequence[str]``: checks every line of a Conversation JSONL file
  before anything runs (raises one :class:`~infermux.errors.InputError` naming file, line and message)
  and returns the row ids in input order.
* :func:`check_output_path` ``(output_path, input_path=None) -> Path | str``: refuses an output that is
  the input (resolved paths, symlinks followed) or a directory, creates missing parent folders, checks the
  folder is writable (a URI: its bucket and credentials, see :mod:`infermux.jobs.storage`); raises
  :class:`~infermux.errors.OutputError` / ``InputError`` (exit 2).
* :func:`run_job_file` ``(engine, input_path, output_path, *, generation, fingerprint, on_progress,
  on_row, row_ids) -> BatchReport``: the durable, resumable file job (async).
* :func:`run_config_job` ``(config, *, on_progress, on_row) -> BatchReport``: the whole file job of a
  config, in the order a user wants errors: input checked, output checked, then the engine built (the
  model loaded) and run, then closed (async).
* :func:`ainfer` / :func:`infer` ``(engine, conversations | None, config | None) -> list[Conversation]``:
  in-memory conversations in, answered conversations out (failed rows come back unanswered with
  ``metadata["error"]``); with ``config.input_path`` the file is the input, with
  ``config.output_path`` the answers are also written (resumable).

``on_row(row: InputRow, result: Conversation | RowError)`` is called once per finished row;
``on_progress(report: BatchReport)`` after each. The report of the last job is also kept on
``engine.last_report``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from infermux.configs.engine_type import engine_name
from infermux.errors import InputError, OutputError, RowError, ServerUnreachableError
from infermux.jobs.collector import fewer_collections
from infermux.jobs.finished import drop_leftovers, finished_rows
from infermux.jobs.loop import BatchReport, JobFiles, run_job
from infermux.jobs.options import JobOptions
from infermux.jobs.rows import (
    EMPTY_ROW,
    InputRow,
    check_encodable,
    is_plain_ascii,
    iter_rows,
    row_id_for,
    tools_fingerprint,
    unique_id,
    validate_file,
    with_default_tools,
)
from infermux.jobs.storage import check_output_uri, is_uri
from infermux.jobs.sync import run_sync
from infermux.jobs.table_out import job_files, output_format
from infermux.jobs.tables import TableColumns
from infermux.types import Conversation, Tool

logger = logging.getLogger("infermux.jobs")

if TYPE_CHECKING:
    from infermux.configs.generation_params import GenerationParams
    from infermux.configs.inference_config import InferenceConfig
    from infermux.engines.base import InferenceEngine

__all__ = [
    "BatchReport",
    "ainfer",
    "check_output_path",
    "default_options",
    "engine_fingerprint",
    "infer",
    "prepare_input",
    "run_config_job",
    "run_job_file",
]

OnRow = Callable[[InputRow, "Conversation | RowError"], None]
OnProgress = Callable[[BatchReport], None]


def prepare_input(
    input_path: str | Path,
    *,
    offered_tools: list[bool] | _AnyOffered | None = None,
    columns: TableColumns | None = None,
) -> Sequence[str]:
    """Check every line (or table row) of the input; return its row ids in order (see the module docstring).

    ``offered_tools`` receives, per row, whether it offers tools (for the engine's capability check,
    ``engine.check(generation, tools=any(offered_tools))``, before any row runs). ``columns`` maps a
    table's columns to conversations (:mod:`infermux.jobs.tables`).
    """
    if offered_tools is None:
        return validate_file(input_path, columns=columns)
    on_row = lambda row: offered_tools.append(bool(row.conversation.tools))  # noqa: E731
    return validate_file(input_path, on_row=on_row, columns=columns)


def check_output_path(
    output_path: str | os.PathLike[str], input_path: str | os.PathLike[str] | None = None
) -> Path | str:
    """Make sure the job can write ``output_path`` without touching its input; return it as a Path.

    A URI (``s3://...``) is checked on its file system (bucket, credentials) and returned as given."""
    if is_uri(output_path):
        check_output_uri(str(output_path), str(input_path) if input_path is not None else None)
        return str(output_path)
    output = Path(output_path)
    if input_path is not None and not is_uri(input_path) and _same_file(output, Path(input_path)):
        raise OutputError(
            f"{output}: --output_path is the input file; answers would replace your prompts. "
            "Choose another --output_path."
        )
    if output.is_dir() and not (output / "state.json").is_file():  # a dataset folder output is replaced
        raise OutputError(f"{output}: is a directory; --output_path must name a file (or a dataset folder).")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{parent}: cannot create the output folder ({exc.strerror}).") from None
    if not parent.is_dir():
        raise OutputError(f"{parent}: is not a folder. Choose another --output_path.")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{parent}: output folder is not writable. Choose another --output_path.")
    return output


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def engine_fingerprint(engine: InferenceEngine, generation: GenerationParams) -> str:
    """The fingerprint of a job run by ``engine`` with ``generation`` (see :mod:`infermux.configs.fingerprint`)."""
    from infermux.configs.inference_config import InferenceConfig

    config = InferenceConfig(
        model=engine.model_params,
        generation=generation,
        engine=engine.engine_type,
        remote_params=engine.remote_params,
        fallbacks=getattr(engine, "fallback_configs", []),  # a FallbackEngine's count for resume
    )
    return config.fingerprint()


async def run_job_file(
    engine: InferenceEngine,
    input_path: str,
    output_path: str | None,
    *,
    generation: GenerationParams | None = None,
    fingerprint: str | None = None,
    on_progress: OnProgress | None = None,
    on_row: OnRow | None = None,
    row_ids: Sequence[str] | None = None,
    tools: list[Tool] | None = None,
    options: JobOptions | None = None,
    settled: Mapping[str, RowError] | None = None,
    job_dir: str | None = None,
    columns: TableColumns | None = None,
    output_format: str | None = None,
) -> BatchReport:
    """The durable batch job: ``input_path`` (JSONL, Parquet or a dataset folder; ``columns`` maps a
    table's columns) → ``output_path`` (JSONL, or Parquet: ``output_format``), resumable.

    ``row_ids`` is what :func:`prepare_input` returned when the caller already checked the file (and
    checked the engine against what it found, see :func:`prepare_input`); the check is otherwise done
    here, before any row runs. ``fingerprint`` defaults to the engine's. ``tools`` are given to every
    row that has none (the CLI's ``--tools``); they count for resume. ``options`` (answer cache, prices,
    budget) default to :func:`default_options`. Rows in ``settled`` (row id → error) are recorded as
    failed without being sent. ``job_dir`` holds the partial and errors files (default: beside the output).
    """
    generation = generation or engine.generation_params
    if row_ids is None:
        offered: list[bool] = []
        row_ids = prepare_input(input_path, offered_tools=offered, columns=columns)
        engine.check(generation, tools=bool(tools) or any(offered))
    else:
        engine.check(generation, tools=bool(tools))
    fingerprint = fingerprint or (columns or TableColumns()).fingerprint(engine_fingerprint(engine, generation))
    if tools:
        fingerprint = tools_fingerprint(fingerprint, tools)
    files = None
    if output_path:
        check_output_path(output_path, input_path)
        files = job_files(
            output_path, fingerprint, job_dir=job_dir, input_path=input_path, columns=columns,
            output_format_name=output_format,
        )  # fmt: skip
    owned = options is None
    options = options or default_options(engine, generation)
    options.fingerprint = options.fingerprint or fingerprint
    ids = row_ids
    try:
        report = await run_job(
            engine, lambda: with_default_tools(iter_rows(input_path, columns), tools), ids, generation,
            files=files, on_row=on_row, on_progress=on_progress, options=options, settled=settled,
        )  # fmt: skip
    except ServerUnreachableError:
        if files is not None:
            files.discard_if_unanswered()  # nothing answered, ever: leave no empty files behind
        raise
    finally:
        if owned:
            options.close()
    engine.last_report = report
    return report


def default_options(engine: InferenceEngine, generation: GenerationParams, *, cache: bool | None = None) -> JobOptions:
    """Prices, no budget, and the answer cache: ``cache`` None uses it for greedy or seeded generation
    (file jobs), False never (in-memory ``engine.infer`` unless its config says ``cache: true``)."""
    name = engine.engine_type if engine.engine_type is not None else engine.name
    return JobOptions.build(engine_name(name), engine.model_params.model_name, generation, cache=cache)


async def run_config_job(
    config: InferenceConfig,
    *,
    on_progress: OnProgress | None = None,
    on_row: OnRow | None = None,
    tools: list[Tool] | None = None,
    progress_lines: Callable[[str], None] | None = None,
) -> BatchReport:
    """Run ``config.input_path`` → ``config.output_path`` (printing is the caller's: pass ``on_row``);
    ``tools`` go to every row without tools.

    Every ``config.progress_interval_s`` seconds a progress line goes to ``progress_lines`` (when given)
    and the progress JSON to ``config.progress_path`` (when set); see :mod:`infermux.jobs.progress`."""
    from infermux.jobs.progress import ProgressTicker

    ticker = ProgressTicker(config.progress_interval_s, lines=progress_lines, path=config.progress_path)
    if not ticker.active:
        return await _run_config_job(config, on_progress=on_progress, on_row=on_row, tools=tools)

    def seen(report: BatchReport) -> None:
        ticker.see(report)
        if on_progress is not None:
            on_progress(report)

    task = asyncio.ensure_future(ticker.run())
    try:
        report = await _run_config_job(config, on_progress=seen, on_row=on_row, tools=tools)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    ticker.finish(report)
    return report


async def _run_config_job(
    config: InferenceConfig,
    *,
    on_progress: OnProgress | None = None,
    on_row: OnRow | None = None,
    tools: list[Tool] | None = None,
) -> BatchReport:
    if not config.input_path:
        raise InputError("no input: set input_path (or --input_path).")
    offered = _AnyOffered()  # whether any row offers tools (not a list of a bool per row)
    columns = TableColumns.of(config)
    row_ids = prepare_input(config.input_path, offered_tools=offered, columns=columns)  # before loading a model
    if not config.output_path:
        return await _load_and_run(
            config, row_ids, offered, columns, on_progress=on_progress, on_row=on_row, tools=tools
        )
    check_output_path(config.output_path, config.input_path)
    fingerprint = config.fingerprint()
    files = job_files(
        config.output_path, tools_fingerprint(fingerprint, tools) if tools else fingerprint, job_dir=config.job_dir,
        input_path=config.input_path, columns=columns, output_format_name=config.output_format,
    )  # fmt: skip
    files.check_writable()
    with files.locked():  # one writer per output, before a model is loaded; a finished job loads none
        input_path = config.input_path
        if finished_rows(files, lambda: with_default_tools(iter_rows(input_path, columns), tools)) == len(row_ids):
            report = BatchReport(total=len(row_ids), resumed=len(row_ids), already_finished=True)
            drop_leftovers(files)
            report.output_path = files.destination
            if on_progress is not None:
                on_progress(report)
            return report
        return await _load_and_run(
            config, row_ids, offered, columns, on_progress=on_progress, on_row=on_row, tools=tools
        )


async def _load_and_run(
    config: InferenceConfig,
    row_ids: Sequence[str],
    offered: _AnyOffered,
    columns: TableColumns,
    *,
    on_progress: OnProgress | None,
    on_row: OnRow | None,
    tools: list[Tool] | None,
) -> BatchReport:
    from infermux.engines.registry import build_engine

    assert config.input_path is not None
    options = JobOptions.from_config(config)  # before loading a model: an unenforceable budget is exit 2
    try:
        engine = _build_announced(config, build_engine)
        try:
            engine.check(config.generation, tools=bool(tools) or offered.any)  # before any row runs
            return await run_job_file(
                engine,
                config.input_path,
                config.output_path,
                generation=config.generation,
                fingerprint=config.fingerprint(),
                on_progress=on_progress,
                on_row=on_row,
                row_ids=row_ids,
                tools=tools,
                options=options,
                job_dir=config.job_dir,
                columns=columns,
                output_format=config.output_format,
            )
        finally:
            engine.close()
    finally:
        options.close()


class _AnyOffered:
    """Takes ``prepare_input``'s per-row ``offered_tools`` flags and keeps only whether any was true."""

    any = False

    def append(self, offered: bool) -> None:
        self.any = self.any or offered


def _build_announced(config: InferenceConfig, build: Callable[[InferenceConfig], InferenceEngine]) -> InferenceEngine:
    """Build the job's engine, saying so first: loading a local model takes seconds to minutes, and a job
    that prints nothing meanwhile looks hung."""
    from infermux.engines.registry import engine_specs

    name = str(getattr(engine := config.resolved_engine(), "value", engine))
    spec = engine_specs().get(name)
    if spec is not None and spec.remote:
        built = build(config)
        logger.info("%s on %s at %s", config.model.model_name, name, getattr(built, "url", "") or "its default URL")
        return built
    logger.info("loading %s on %s ...", config.model.model_name, name)
    started = time.monotonic()
    built = build(config)
    logger.info("loaded in %.1f s", time.monotonic() - started)
    return built


async def ainfer(
    engine: InferenceEngine,
    conversations: Sequence[Conversation] | None = None,
    config: InferenceConfig | None = None,
) -> list[Conversation]:
    """Answer ``conversations`` (or ``config.input_path``); write ``config.output_path`` if set."""
    call_engine = _engine_for_config(engine, config) if config is not None else engine
    with fewer_collections():  # rows read, answered and put in order: a few objects each (jobs/collector.py)
        if call_engine is engine:
            return await _ainfer(engine, conversations, config)
        try:
            return await _ainfer(call_engine, conversations, config)
        finally:
            engine.last_report = call_engine.last_report
            call_engine.close()


async def _ainfer(
    engine: InferenceEngine, conversations: Sequence[Conversation] | None, config: InferenceConfig | None
) -> list[Conversation]:
    generation = config.generation if config else engine.generation_params
    if conversations is not None:
        conversations = list(conversations)
        engine.check(generation, tools=any(c.tools for c in conversations))
    output_path = config.output_path if config else None
    if conversations is None:
        if config is None or not config.input_path:
            raise InputError("no input: pass conversations or set input_path in the config.")
        answered: dict[int, Conversation] = {}

        def keep(row: InputRow, result: Conversation | RowError) -> None:
            answered[row.index] = as_conversation(row.conversation, result)

        await run_job_file(
            engine, config.input_path, output_path, generation=generation, on_row=keep, job_dir=config.job_dir,
            columns=TableColumns.of(config), output_format=config.output_format,
        )  # fmt: skip
        if output_path is not None and output_format(output_path, config.output_format) == "jsonl":
            return [Conversation.model_validate_json(line) for line in _read_lines(output_path)]
        return [answered[i] for i in sorted(answered)]
    rows = rows_from_memory(conversations, durable=output_path is not None)
    ids = [r.row_id for r in rows]
    collect: list[Conversation | RowError | None] = [None] * len(rows)
    files = None
    fingerprint = engine_fingerprint(engine, generation)
    if output_path:
        check_output_path(output_path)
        files = JobFiles(output_path, fingerprint, job_dir=config.job_dir if config else None)
    # In memory, answers come from the cache only when asked (``cache: true``): a library call that
    # samples again with the same seed expects the engine to run.
    options = default_options(engine, generation, cache=bool(config is not None and config.cache))
    options.fingerprint = fingerprint
    try:
        report = await run_job(
            engine, lambda: rows, ids, generation, files=files,
            on_row=lambda row, r: collect.__setitem__(row.index, r), options=options,
        )  # fmt: skip
    finally:
        options.close()
    engine.last_report = report
    if files is not None and any(r is None for r in collect):
        _fill_recorded(files, rows, collect)  # rows a previous run answered (or the whole finished job)
    return [as_conversation(rows[i].conversation, r) for i, r in enumerate(collect)]


def _fill_recorded(files: JobFiles, rows: list[InputRow], collect: list[Conversation | RowError | None]) -> None:
    """Fill ``collect`` with the recorded answers of rows this run did not answer: from the partial file
    of an unfinished job, else from the output of a finished one (all its rows, in order)."""
    if files.partial.exists():
        position = {rows[i].row_id: i for i, r in enumerate(collect) if r is None}
        for rid, conversation in files.recorded(position):
            collect[position[rid]] = conversation
    elif files.remote is None and files.output.exists():
        answered = [Conversation.model_validate_json(line) for line in _read_lines(str(files.output))]
        if len(answered) == len(collect):
            collect[:] = answered


def infer(
    engine: InferenceEngine,
    conversations: Sequence[Conversation] | None = None,
    config: InferenceConfig | None = None,
) -> list[Conversation]:
    """Synchronous :func:`ainfer` (works inside a running event loop too)."""
    return run_sync(lambda: ainfer(engine, conversations, config))  # type: ignore[no-any-return]


def _engine_for_config(engine: InferenceEngine, config: InferenceConfig) -> InferenceEngine:
    """``engine``, or one of its class built with the config's model and remote settings (as in Oumi,
    a config passed to ``infer`` overrides them for that call). Remote engines only: a local engine
    keeps the model it loaded."""
    if engine.remote_params is None and config.remote_params is None:
        return engine
    if getattr(engine, "fallback_configs", None):  # a FallbackEngine is built from a whole config, not one section
        return engine
    model_changed = "model" in config.model_fields_set and config.model != engine.model_params
    remote_changed = config.remote_params is not None and config.remote_params != engine.remote_params
    if not (model_changed or remote_changed):
        return engine
    return type(engine)(
        config.model if model_changed else engine.model_params,
        generation_params=config.generation,
        remote_params=config.remote_params if remote_changed else engine.remote_params,
        strict=engine.strict or config.strict,
        **engine.constructor_extras(),
    )


def rows_from_memory(conversations: Iterable[Conversation], *, durable: bool = True) -> list[InputRow]:
    """Rows with ids; content-derived ids (for resume) only when the job writes an output file."""
    rows = []
    seen: dict[str, int] = {}
    for index, conv in enumerate(conversations):
        if not conv.messages:
            raise InputError(EMPTY_ROW, path=f"input[{index}]")
        if not is_plain_ascii(conv):  # the common row needs no check (nor its path formatted)
            check_encodable(conv, path=f"input[{index}]")
        if durable:
            data = conv.to_json_dict()
            data.setdefault("conversation_id", None)  # the shape row ids were derived from before issue 24
            data.setdefault("metadata", {})
            raw = json.dumps(data, sort_keys=True).encode()
            rid = row_id_for(index, conv.conversation_id, raw)
        else:
            rid = conv.conversation_id or f"row-{index}"
        rid = unique_id(rid, seen)
        rows.append(InputRow(index=index, line=index + 1, row_id=rid, conversation=conv))
    return rows


def as_conversation(original: Conversation, result: Conversation | RowError | None) -> Conversation:
    """The answered conversation, or ``original`` with ``metadata["error"]`` describing the failure."""
    if isinstance(result, Conversation):
        return result
    error = result or RowError(kind="internal", message="row was not run")
    meta = dict(original.metadata)
    meta["error"] = error.to_json_dict()
    return original.model_copy(update={"metadata": meta})


def _read_lines(path: str) -> Iterable[str | bytes]:
    if is_uri(path):
        from infermux.jobs.storage import read_lines

        yield from (line for line in read_lines(path) if line.strip())
        return
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield line
