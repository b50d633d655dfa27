"""A job through a provider's batch API, over the engine's :class:`~infermux.engines.batch_client.BatchClient`.

``submit`` turns the input JSONL into batch requests (each row's request the body the engine would send
online), cuts them into batches within the client's limits, and creates them; ``status`` polls;
``fetch`` downloads the results of the batches that ended and records each row through
:func:`infermux.jobs.loop.record_result` into the same partial, errors and output files, under the same
config fingerprint, as the online job, priced at the provider's batch rate (:mod:`infermux.jobs.cost`).
So rows the batch failed are answered online by running the ordinary job on the same input and output
(``infermux batch fetch --rerun-failed``, or :mod:`infermux.jobs.batch_run`), and the output file is
the online job's, row for row, apart from the answers.

The job record (:mod:`infermux.jobs.batch_state`, ``<output>.batch.json``) is saved after every step:
uploaded, creation asked for, created, status seen. An interrupted ``submit`` never uploads or creates a
batch twice: a creation that was asked for but not recorded is looked up (:meth:`BatchClient.find`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infermux.configs.engine_type import engine_name
from infermux.engines.batch_client import BatchInfo, BatchInput
from infermux.errors import ConfigError, ErrorKind, InfermuxError, RemoteError, RowError, ServerUnreachableError
from infermux.jobs.api import engine_fingerprint
from infermux.jobs.batch_state import BatchJobState, ShardState, state_path
from infermux.jobs.cost import price_answer, pricing_for
from infermux.jobs.files import JobFiles
from infermux.jobs.loop import BatchReport, record_result
from infermux.jobs.row_settings import RowSettings
from infermux.jobs.rows import InputRow, iter_rows, validate_file
from infermux.jobs.sync import run_sync
from infermux.types import Conversation

if TYPE_CHECKING:
    from infermux.configs.generation_params import GenerationParams
    from infermux.engines.base import InferenceEngine
    from infermux.engines.batch_client import BatchClient
    from infermux.jobs.tables import TableColumns

__all__ = [
    "BatchFetchReport",
    "acancel",
    "afetch",
    "alist",
    "astatus",
    "asubmit",
    "cancel",
    "client_for",
    "fetch",
    "list_batches",
    "status",
    "submit",
]

_PARSE_ERRORS = (ValueError, KeyError, TypeError, IndexError)


@dataclasses.dataclass
class BatchFetchReport:
    """What ``fetch`` wrote: ``done`` rows in the output, ``failed`` in the errors file, ``pending`` not back yet."""

    done: int
    failed: int
    pending: int
    output_path: str
    errors_path: str | None
    settled: dict[str, RowError] = dataclasses.field(default_factory=dict)
    """Failed rows not worth answering online (the request itself is wrong), by row id."""


def client_for(engine: InferenceEngine) -> BatchClient:
    """The engine's batch client; a :class:`ConfigError` when it has no batch API."""
    client = engine.batch_client()
    if client is None:
        from infermux.engines.registry import batch_engines

        raise ConfigError(f"{engine.name} has no batch API; use {batch_engines()}.")
    return client


def _fingerprint(engine: InferenceEngine, fingerprint: str | None) -> str:
    return fingerprint or engine_fingerprint(engine, engine.generation_params)


def _digest(row_ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(row_ids).encode()).hexdigest()[:20]


# ---------------------------------------------------------------------------------------- submit


def _shards(
    client: BatchClient,
    input_path: str,
    generation: GenerationParams,
    state: BatchJobState,
    columns: TableColumns | None = None,
) -> Iterator[tuple[ShardState, list[bytes]]]:
    """Yield (ShardState, encoded requests) in input order, within the client's limits."""
    limits = client.limits
    requests: list[bytes] = []
    size = first = last = index = 0
    settings = RowSettings(generation)  # each request with its row's generation settings, if it has some
    for row in iter_rows(input_path, columns):
        try:
            chosen = settings.of(row.conversation)
            if isinstance(chosen, RowError):
                raise ValueError(chosen.message)
            request = client.encode(client.custom_id(row.row_id), row.conversation, chosen)
        except (InfermuxError, ValueError, OSError) as exc:
            state.build_errors[row.row_id] = str(exc)
            continue
        cost = len(request) + limits.separator
        if cost + limits.envelope > limits.max_bytes:
            state.build_errors[row.row_id] = (
                f"the request is {len(request)} bytes, over the {limits.max_bytes}-byte {limits.name}"
            )
            continue
        if requests and (len(requests) >= limits.max_requests or size + cost + limits.envelope > limits.max_bytes):
            yield ShardState(index, first, last, len(requests), size), requests
            requests, size, index = [], 0, index + 1
        if not requests:
            first = row.index
        requests.append(request)
        size, last = size + cost, row.index
    if requests:
        yield ShardState(index, first, last, len(requests), size), requests


async def asubmit(
    engine: InferenceEngine,
    input_path: str,
    output_path: str,
    *,
    fingerprint: str | None = None,
    columns: TableColumns | None = None,
) -> BatchJobState:
    """Create the provider batches of ``input_path`` (resumable; a batch is never created twice); ``columns``
    maps a table input's columns (:mod:`infermux.jobs.tables`)."""
    fingerprint = _fingerprint(engine, fingerprint)
    row_ids = validate_file(input_path, columns=columns)
    state = BatchJobState.load(output_path)
    client = client_for(engine)
    fresh = BatchJobState(
        state_path(output_path), fingerprint, str(Path(input_path).resolve()), client.endpoint, client.completion_window
    )
    fresh.rows_digest = _digest(row_ids)
    if state is not None and (state.fingerprint, state.job_id) != (fingerprint, fresh.job_id):
        raise ConfigError(
            f"{state.path} records a batch job for another config or input; fetch it with its own config, "
            "or move the file away to start a new job."
        )
    state = state or fresh
    async with client:
        shards = _shards(client, input_path, engine.generation_params, state, columns)
        for index, (shard, requests) in enumerate(shards):
            if index < len(state.shards):
                known = state.shards[index]
                if (known.first_index, known.last_index, known.requests) != (
                    shard.first_index, shard.last_index, shard.requests,
                ):  # fmt: skip
                    raise ConfigError(f"{input_path} changed since the batch job in {state.path} was submitted.")
                shard = known
            else:
                state.shards.append(shard)
            await _create(client, state, shard, requests)
        state.save()
    return state


async def _create(client: BatchClient, state: BatchJobState, shard: ShardState, requests: list[bytes]) -> None:
    if shard.batch_id or shard.terminal:
        return
    if len(requests) < client.limits.min_requests:  # the provider would refuse it: answered online instead
        shard.status, shard.ended = "not sent", True
        shard.errors = [
            f"{len(requests)} requests are fewer than the {client.limits.min_requests} {client.name} takes in one "
            "batch; not sent"
        ]
        state.save()
        return
    tag = {"infermux_job": state.job_id, "infermux_shard": str(shard.index)}
    name = f"infermux-{state.job_id}-{shard.index}"
    if shard.create_started:  # interrupted after asking for the batch: it may exist already
        found = await client.find(BatchInput(name, requests, tag, shard.create_started_at, shard.input_file_id))
        if found is not None:
            _created(state, shard, found)
            return
    if not shard.input_file_id:
        shard.input_file_id = await client.upload(BatchInput(name, requests, tag))
        if shard.input_file_id:
            state.save()
    shard.create_started = True
    shard.create_started_at = dt.datetime.now(dt.timezone.utc).isoformat()
    state.save()
    _created(state, shard, await client.create(BatchInput(name, requests, tag), shard.input_file_id))


def _created(state: BatchJobState, shard: ShardState, info: BatchInfo) -> None:
    shard.batch_id, shard.status, shard.ended = info.id, info.status, info.ended
    state.save()


# ---------------------------------------------------------------------------------------- status, cancel, list


async def astatus(engine: InferenceEngine, output_path: str) -> BatchJobState:
    """Poll every batch of the job recorded beside ``output_path``."""
    state = BatchJobState.require(output_path)
    async with client_for(engine) as client:
        await _refresh(client, state)
    return state


async def _refresh(client: BatchClient, state: BatchJobState) -> None:
    for shard in state.shards:
        if shard.batch_id and not shard.terminal:
            info = await client.retrieve(shard.batch_id)
            shard.status, shard.ended = info.status, info.ended
            shard.output_file_id, shard.error_file_id = info.output_file_id, info.error_file_id
            shard.request_counts, shard.errors = info.request_counts, info.errors
    state.save()


async def acancel(engine: InferenceEngine, output_path: str) -> BatchJobState:
    """Ask every unfinished batch of the job to stop."""
    state = BatchJobState.require(output_path)
    async with client_for(engine) as client:
        for shard in state.shards:
            if shard.batch_id and not shard.terminal:
                info = await client.cancel(shard.batch_id)
                shard.status, shard.ended = info.status, info.ended
        state.save()
    return state


async def alist(engine: InferenceEngine, limit: int = 20) -> list[dict[str, Any]]:
    """The account's most recent ``limit`` batches, as the provider describes them."""
    async with client_for(engine) as client:
        return await client.list(limit)


# ---------------------------------------------------------------------------------------- fetch


async def afetch(
    engine: InferenceEngine,
    input_path: str,
    output_path: str,
    *,
    fingerprint: str | None = None,
    columns: TableColumns | None = None,
    output_format: str | None = None,
) -> BatchFetchReport:
    """Download finished results into ``output_path`` (failed rows into its errors file), like an online
    job would write them; rows already done are kept; the output is assembled in input order (complete
    only when nothing failed or is pending): JSONL, or Parquet (:mod:`infermux.jobs.table_out`)."""
    from infermux.jobs.table_out import job_files

    fingerprint = _fingerprint(engine, fingerprint)
    state = BatchJobState.require(output_path)
    row_ids = validate_file(input_path, columns=columns)
    if state.rows_digest and state.rows_digest != _digest(row_ids):
        raise ConfigError(f"{input_path} is not the input the batch job in {state.path} was submitted with.")
    records: dict[str, Any] = {}
    async with client_for(engine) as client:
        await _refresh(client, state)
        for shard in state.shards:
            if shard.terminal and shard.batch_id:
                records.update(await client.results(_info(shard)))
    pricing = pricing_for(engine_name(engine.engine_type), engine.model_params.model_name)

    files = job_files(
        output_path, fingerprint, input_path=input_path, columns=columns, output_format_name=output_format
    )
    files.check_writable()
    with files.locked():  # one writer per output
        return _record_fetched(files, client, state, lambda: iter_rows(input_path, columns), row_ids, records, pricing)


def _record_fetched(
    files: JobFiles,
    client: BatchClient,
    state: BatchJobState,
    rows: Callable[[], Iterator[InputRow]],
    row_ids: Sequence[str],
    records: dict[str, Any],
    pricing: Any,
) -> BatchFetchReport:
    files.reopen_finished()  # a finished job fetched again: its rows are done
    done_before = files.load_done(row_ids, rows=rows)
    report = BatchReport(total=len(row_ids), resumed=len(done_before))
    pending = 0
    settled: dict[str, RowError] = {}
    files.open()
    try:
        for row in rows():
            if row.index in done_before:
                continue
            result = _row_result(client, state, row, records)
            if result is None:
                pending += 1
                continue
            if isinstance(result, RowError):
                if not result.retryable:
                    settled[row.row_id] = result
            else:
                price_answer(result, pricing, batch=True)
            record_result(report, files, row, result)
    finally:
        files.close()
    files.assemble(row_ids, complete=report.failed == 0 and pending == 0)
    errors = str(files.errors) if files.errors.exists() else None
    return BatchFetchReport(report.resumed + report.done, report.failed, pending, str(files.output), errors, settled)


def _info(shard: ShardState) -> BatchInfo:
    return BatchInfo(
        str(shard.batch_id), shard.status, shard.ended, shard.request_counts, shard.errors,
        shard.output_file_id, shard.error_file_id,
    )  # fmt: skip


def _row_result(
    client: BatchClient, state: BatchJobState, row: InputRow, records: dict[str, Any]
) -> Conversation | RowError | None:
    """The row's answer or failure from the batch; None while its batch is still running."""
    if row.row_id in state.build_errors:
        return RowError(ErrorKind.INVALID_INPUT, state.build_errors[row.row_id])
    record = records.get(client.custom_id(row.row_id))
    if record is None:
        shard = next((s for s in state.shards if s.first_index <= row.index <= s.last_index), None)
        if shard is None or not shard.terminal:
            return None
        return client.missing(_info(shard))
    try:
        return client.answer(row.conversation, record)
    except _PARSE_ERRORS as exc:
        return RowError(ErrorKind.MALFORMED_RESPONSE, f"unparsable batch result: {exc}", retryable=True)


# ---------------------------------------------------------------------------------------- from sync code


def _run(engine: InferenceEngine, call: Callable[[], Awaitable[Any]]) -> Any:
    """``call()`` to its end from synchronous code; a provider that cannot be reached at all (DNS, a
    refused connection) is one clear error, as for online jobs, instead of the HTTP client's words."""
    try:
        return run_sync(call)
    except ServerUnreachableError:
        raise
    except RemoteError as exc:
        if exc.kind != ErrorKind.CONNECTION_ERROR or "ClientConnector" not in str(exc):
            raise
        where = (engine.remote_params.api_url if engine.remote_params else None) or "the provider's batch API"
        raise ServerUnreachableError(
            f"cannot reach {where} ({exc}). Is the network up, and is remote_params.api_url right? Nothing was "
            "lost: rerun the same command once it is reachable.",
            kind=ErrorKind.CONNECTION_ERROR,
            retryable=True,
        ) from None


def submit(
    engine: InferenceEngine, input_path: str, output_path: str, *, fingerprint: str | None = None, **table: Any
) -> BatchJobState:
    """:func:`asubmit` from synchronous code (``table``: its ``columns``)."""
    return _run(engine, lambda: asubmit(engine, input_path, output_path, fingerprint=fingerprint, **table))  # type: ignore[no-any-return]


def status(engine: InferenceEngine, output_path: str) -> BatchJobState:
    """:func:`astatus` from synchronous code."""
    return _run(engine, lambda: astatus(engine, output_path))  # type: ignore[no-any-return]


def fetch(
    engine: InferenceEngine, input_path: str, output_path: str, *, fingerprint: str | None = None, **table: Any
) -> BatchFetchReport:
    """:func:`afetch` from synchronous code (``table``: its ``columns`` and ``output_format``)."""
    return _run(engine, lambda: afetch(engine, input_path, output_path, fingerprint=fingerprint, **table))  # type: ignore[no-any-return]


def cancel(engine: InferenceEngine, output_path: str) -> BatchJobState:
    """:func:`acancel` from synchronous code."""
    return _run(engine, lambda: acancel(engine, output_path))  # type: ignore[no-any-return]


def list_batches(engine: InferenceEngine, limit: int = 20) -> list[dict[str, Any]]:
    """:func:`alist` from synchronous code."""
    return _run(engine, lambda: alist(engine, limit))  # type: ignore[no-any-return]
