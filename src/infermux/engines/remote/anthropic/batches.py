"""Anthropic's Message Batches API (``/v1/messages/batches``) for ANTHROPIC: submit, status, fetch,
cancel, list.

``submit`` turns the input JSONL into batch requests (``custom_id`` derived from the row id: Anthropic
allows ``[a-zA-Z0-9_-]{1,64}``; ``params`` = the body the engine would send online), cut into batches
within the API's limits (100,000 requests, 256 MB), and creates them; ``status`` polls
(``processing_status``: ``in_progress``, ``canceling``, ``ended``); ``fetch`` reads each ended batch's
results (JSON Lines, any order) and maps them back by ``custom_id``: ``succeeded`` rows are answered,
``errored``, ``expired`` and ``canceled`` rows are failures (``batch_error``, ``batch_expired``,
``batch_cancelled``; ``errored`` with ``invalid_request_error`` is not worth retrying, the others are
answered online by ``infermux batch run`` or a rerun).

The job record is the same as the OpenAI Batch API's (:mod:`.openai.batch_state`, ``<output>.batch.json``),
saved after every step. Message batches carry no metadata, so an interrupted creation is found again by
listing the batches created since it was asked for with the same number of requests.
Results are read from ``/v1/messages/batches/{id}/results`` on the configured server (the key is never
sent to another host, whatever ``results_url`` says).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infermux.engines.remote.batch_jobs import BatchFetchReport, CancellableBatchJobsMixin, record_batch_results
from infermux.engines.remote.http.transport import HttpRequest, Transport
from infermux.engines.remote.openai.batch_api import _digest, _object, price_batch_row
from infermux.engines.remote.openai.batch_state import BatchJobState, ShardState, state_path
from infermux.errors import ConfigError, ErrorKind, InfermuxError, RowError
from infermux.jobs.rows import InputRow, iter_rows, validate_file
from infermux.types import Conversation

if TYPE_CHECKING:
    from infermux.configs.generation_params import GenerationParams
    from infermux.engines.remote.base import RemoteEngine

__all__ = ["MessageBatchesMixin", "custom_id_for"]

MAX_REQUESTS = 100_000
MAX_BYTES = 256 * 2**20
ENDPOINT = "/v1/messages/batches"
#: Error types of a request that would fail the same way online.
_PERMANENT = frozenset(
    {"invalid_request_error", "authentication_error", "permission_error", "not_found_error", "request_too_large"}
)


def custom_id_for(row_id: str) -> str:
    """A ``custom_id`` Anthropic accepts, stable for the row id."""
    return "r" + hashlib.sha256(row_id.encode("utf-8", "surrogatepass")).hexdigest()[:40]


class _Api:
    def __init__(self, engine: RemoteEngine) -> None:
        engine.check_ready()
        self.root = engine.url.removesuffix("/messages").removesuffix("/v1")
        self.headers = dict(engine.headers)
        hint = f"Check the key in {engine.api_key_env} (or remote_params.api_key)." if engine.api_key_env else ""
        kwargs: dict[str, Any] = {"secrets": engine._secrets, "auth_hint": hint, "error_message": engine.error_message}
        self.transport: Transport[Any] = Transport(engine.settings, **kwargs)
        self.once: Transport[Any] = Transport(dataclasses.replace(engine.settings, max_retries=0), **kwargs)

    async def __aenter__(self) -> _Api:
        await self.transport.__aenter__()
        await self.once.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.once.__aexit__(*exc)
        await self.transport.__aexit__(*exc)

    async def call(self, method: str, path: str, body: bytes = b"", *, once: bool = False) -> dict[str, Any]:
        transport = self.once if once else self.transport
        return await transport.send(HttpRequest(self.root + ENDPOINT + path, body, self.headers, method), _object)

    async def results(self, batch_id: str) -> bytes:
        request = HttpRequest(f"{self.root}{ENDPOINT}/{batch_id}/results", b"", self.headers, "GET")
        return await self.transport.send(request, bytes, raw=True)

    async def list(self, limit: int = 20, after_id: str = "") -> dict[str, Any]:
        query = f"?limit={limit}" + (f"&after_id={after_id}" if after_id else "")
        return await self.call("GET", query)


# ---------------------------------------------------------------------------------------- submit


def _batches(
    engine: RemoteEngine, input_path: str, generation: GenerationParams, state: BatchJobState
) -> Iterator[tuple[ShardState, list[bytes]]]:
    """Yield (ShardState, request JSON pieces) in input order, within the API's limits."""
    pieces: list[bytes] = []
    size = first = last = index = 0
    for row in iter_rows(input_path):
        try:
            params = engine.build_body(row.conversation, generation)
        except (InfermuxError, ValueError, OSError) as exc:
            state.build_errors[row.row_id] = str(exc)
            continue
        piece = json.dumps({"custom_id": custom_id_for(row.row_id), "params": params}).encode()
        if len(piece) + 16 > MAX_BYTES:
            state.build_errors[row.row_id] = f"the request is {len(piece)} bytes, over the {MAX_BYTES}-byte limit"
            continue
        if pieces and (len(pieces) >= MAX_REQUESTS or size + len(piece) + 16 > MAX_BYTES):
            yield ShardState(index, first, last, len(pieces), size), pieces
            pieces, size, index = [], 0, index + 1
        if not pieces:
            first = row.index
        pieces.append(piece)
        size, last = size + len(piece) + 1, row.index
    if pieces:
        yield ShardState(index, first, last, len(pieces), size), pieces


async def asubmit(
    engine: RemoteEngine, input_path: str, output_path: str, generation: GenerationParams, fingerprint: str
) -> BatchJobState:
    row_ids = validate_file(input_path)
    state = BatchJobState.load(output_path)
    fresh = BatchJobState(state_path(output_path), fingerprint, str(Path(input_path).resolve()), ENDPOINT, "24h")
    fresh.rows_digest = _digest(row_ids)
    if state is not None and (state.fingerprint, state.job_id) != (fingerprint, fresh.job_id):
        raise ConfigError(
            f"{state.path} records a batch job for another config or input; fetch it with its own config, "
            "or move the file away to start a new job."
        )
    state = state or fresh
    async with _Api(engine) as api:
        for index, (shard, pieces) in enumerate(_batches(engine, input_path, generation, state)):
            if index < len(state.shards):
                known = state.shards[index]
                if (known.first_index, known.last_index, known.requests) != (
                    shard.first_index, shard.last_index, shard.requests,
                ):  # fmt: skip
                    raise ConfigError(f"{input_path} changed since the batch job in {state.path} was submitted.")
                shard = known
            else:
                state.shards.append(shard)
            await _create(api, state, shard, pieces)
        state.save()
    return state


async def _create(api: _Api, state: BatchJobState, shard: ShardState, pieces: list[bytes]) -> None:
    if shard.batch_id:
        return
    if shard.create_started and shard.create_started_at:  # interrupted after asking: it may exist already
        found = await _find(api, shard)
        if found is not None:
            shard.batch_id, shard.status = str(found["id"]), found.get("processing_status")
            state.save()
            return
    shard.create_started = True
    shard.create_started_at = dt.datetime.now(dt.timezone.utc).isoformat()
    state.save()
    body = b'{"requests":[' + b",".join(pieces) + b"]}"
    batch = await api.call("POST", "", body, once=True)  # never blindly retried: it may have been created
    shard.batch_id, shard.status = str(batch["id"]), batch.get("processing_status")
    state.save()


async def _find(api: _Api, shard: ShardState, pages: int = 10) -> dict[str, Any] | None:
    """The batch created for ``shard`` (created since it was asked for, with as many requests)."""
    since = dt.datetime.fromisoformat(str(shard.create_started_at))
    after = ""
    for _ in range(pages):
        page = await api.list(100, after)
        for batch in page.get("data") or []:
            created = dt.datetime.fromisoformat(str(batch.get("created_at", "")).replace("Z", "+00:00"))
            if created < since:
                return None  # most recent first: older batches follow
            if sum((batch.get("request_counts") or {}).values()) == shard.requests:
                return batch
        if not page.get("has_more") or not page.get("data"):
            return None
        after = str(page.get("last_id") or page["data"][-1]["id"])
    return None


# ---------------------------------------------------------------------------------------- status, cancel


async def astatus(engine: RemoteEngine, output_path: str) -> BatchJobState:
    state = BatchJobState.require(output_path)
    async with _Api(engine) as api:
        await _refresh(api, state)
    return state


async def _refresh(api: _Api, state: BatchJobState) -> None:
    for shard in state.shards:
        if shard.batch_id and not shard.terminal:
            batch = await api.call("GET", f"/{shard.batch_id}")
            shard.status = batch.get("processing_status")
            shard.request_counts = dict(batch.get("request_counts") or {})
    state.save()


async def acancel(engine: RemoteEngine, output_path: str) -> BatchJobState:
    state = BatchJobState.require(output_path)
    async with _Api(engine) as api:
        for shard in state.shards:
            if shard.batch_id and not shard.terminal:
                batch = await api.call("POST", f"/{shard.batch_id}/cancel")
                shard.status = batch.get("processing_status")
        state.save()
    return state


async def alist(engine: RemoteEngine, limit: int = 20) -> list[dict[str, Any]]:
    """The most recent ``limit`` message batches of the account (following pages as needed)."""
    out: list[dict[str, Any]] = []
    async with _Api(engine) as api:
        after = ""
        while len(out) < limit:
            page = await api.list(min(1000, limit - len(out)), after)
            out.extend(page.get("data") or [])
            if not page.get("has_more") or not page.get("data"):
                break
            after = str(page.get("last_id") or page["data"][-1]["id"])
    return out[:limit]


# ---------------------------------------------------------------------------------------- fetch


async def afetch(engine: RemoteEngine, input_path: str, output_path: str, fingerprint: str) -> BatchFetchReport:
    state = BatchJobState.require(output_path)
    row_ids = validate_file(input_path)
    if state.rows_digest and state.rows_digest != _digest(row_ids):
        raise ConfigError(f"{input_path} is not the input the batch job in {state.path} was submitted with.")
    results: dict[str, dict[str, Any]] = {}
    async with _Api(engine) as api:
        await _refresh(api, state)
        for shard in state.shards:
            if shard.terminal and shard.batch_id:
                for raw in (await api.results(shard.batch_id)).splitlines():
                    if raw.strip():
                        record = json.loads(raw)
                        results[str(record.get("custom_id"))] = record.get("result") or {}

    def result_for(row: InputRow) -> Conversation | RowError | None:
        result = _row_result(engine, state, row.row_id, row.index, row.conversation, results)
        return price_batch_row(engine, result) if isinstance(result, Conversation) else result

    return record_batch_results(input_path, output_path, fingerprint, row_ids, result_for)


def _row_result(
    engine: RemoteEngine,
    state: BatchJobState,
    row_id: str,
    index: int,
    conversation: Conversation,
    results: dict[str, dict[str, Any]],
) -> Conversation | RowError | None:
    if row_id in state.build_errors:
        return RowError(ErrorKind.INVALID_INPUT, state.build_errors[row_id])
    result = results.get(custom_id_for(row_id))
    if result is None:
        shard = next((s for s in state.shards if s.first_index <= index <= s.last_index), None)
        if shard is None or not shard.terminal:
            return None
        return RowError(ErrorKind.BATCH_FAILED, "the ended batch has no result for this row", retryable=True)
    kind = result.get("type")
    if kind == "succeeded":
        try:
            return engine.parse_reply(conversation, result["message"])
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            return RowError(ErrorKind.MALFORMED_RESPONSE, f"unparsable batch result: {exc}", retryable=True)
    if kind == "errored":
        error = (result.get("error") or {}).get("error") or {}
        etype = str(error.get("type") or "api_error")
        return RowError(
            ErrorKind.BATCH_ERROR, f"{etype}: {error.get('message', '')}", retryable=etype not in _PERMANENT
        )
    if kind == "expired":
        return RowError(ErrorKind.BATCH_EXPIRED, "the batch request expired before it ran", retryable=True)
    if kind == "canceled":
        return RowError(ErrorKind.BATCH_CANCELLED, "the batch request was canceled before it ran", retryable=True)
    return RowError(ErrorKind.MALFORMED_RESPONSE, f"unknown batch result type {kind!r}", retryable=True)


# ---------------------------------------------------------------------------------------- engine methods


class MessageBatchesMixin(CancellableBatchJobsMixin):
    """Message Batches operations as engine methods (the same names as the OpenAI Batch API's)."""

    batch_protocol = sys.modules[__name__]
