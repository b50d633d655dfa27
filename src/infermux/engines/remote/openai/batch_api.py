"""The OpenAI Batch API (``/v1/files`` + ``/v1/batches``) for OPENAI and any server that implements it.

``submit`` turns an input JSONL into batch request lines (``custom_id`` = the row id, the body the
engine would send online), splits them into files within the provider's limits (50,000 requests,
200 MB), uploads each and creates one batch per file; ``status`` polls; ``fetch`` downloads output and
error files and maps results back by ``custom_id`` (the provider does not keep line order).

Results go through the same partial/errors files as the online batch loop, under the same config
fingerprint, so rows the batch failed are rerun online by running the ordinary job on the same input
and output (``infermux batch fetch --rerun-failed``). The job record (:mod:`.batch_state`) is saved
after every step, and each batch carries ``metadata`` naming its job and shard, so an interrupted
``submit`` finds a batch it created but did not get to record instead of creating a second one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from infermux.configs.engine_type import engine_name
from infermux.engines.remote.batch_jobs import BatchFetchReport, BatchJobsMixin, record_batch_results
from infermux.engines.remote.http.transport import HttpRequest, Transport, default_error_message
from infermux.engines.remote.openai.batch_state import BatchJobState, ShardState, state_path
from infermux.errors import ConfigError, InfermuxError, RemoteError, RowError
from infermux.jobs.rows import InputRow, iter_rows, validate_file
from infermux.types import Conversation

if TYPE_CHECKING:
    from infermux.configs.generation_params import GenerationParams
    from infermux.engines.remote.base import RemoteEngine

__all__ = ["BatchApi", "BatchApiMixin", "BatchFetchReport", "afetch", "astatus", "asubmit"]

MAX_REQUESTS = 50_000
MAX_BYTES = 200 * 2**20
_RETRYABLE = frozenset({408, 409, 429, 500, 502, 503, 504})


@dataclass
class BatchApi:
    """Files and Batches calls against the server behind an OpenAI-compatible engine."""

    def __init__(
        self, transport: Transport[Any], chat_url: str, headers: dict[str, str], once: Transport[Any] | None = None
    ) -> None:
        parts = urlsplit(chat_url)
        self.endpoint = parts.path  # e.g. /v1/chat/completions: the batch endpoint and each line's url
        root = parts.path.removesuffix("/chat/completions")
        self._url: Callable[[str], str] = lambda p: urlunsplit((parts.scheme, parts.netloc, root + p, parts.query, ""))
        self.transport = transport
        self.once = once or transport  # no retries of its own: for calls that are not idempotent
        self.headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}

    async def _json(self, method: str, path: str, payload: Any = None, *, once: bool = False) -> dict[str, Any]:
        body = b"" if payload is None else json.dumps(payload).encode()
        headers = {**self.headers, "Content-Type": "application/json"} if payload is not None else self.headers
        transport = self.once if once else self.transport
        return await transport.send(HttpRequest(self._url(path), body, headers, method), _object)

    async def upload(self, filename: str, data: bytes) -> str:
        boundary = f"infermux-{uuid.uuid4().hex}"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                "Content-Type: application/jsonl\r\n\r\n"
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        headers = {**self.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"}
        reply = await self.transport.send(HttpRequest(self._url("/files"), body, headers), _object)
        return str(reply["id"])

    async def create(self, file_id: str, window: str, metadata: dict[str, str]) -> dict[str, Any]:
        payload = {"input_file_id": file_id, "endpoint": self.endpoint, "completion_window": window}
        # Not retried blindly: a timeout may hide a batch that was created (see _submit_shard).
        return await self._json("POST", "/batches", {**payload, "metadata": metadata}, once=True)

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/batches/{batch_id}")

    async def find(self, metadata: dict[str, str], pages: int = 20) -> dict[str, Any] | None:
        """The most recent batch whose metadata includes ``metadata`` (searching ``pages`` pages)."""
        after = ""
        for _ in range(pages):
            page = await self._json("GET", "/batches?limit=100" + (f"&after={after}" if after else ""))
            for batch in page.get("data") or []:
                if all((batch.get("metadata") or {}).get(k) == v for k, v in metadata.items()):
                    return batch
            if not page.get("has_more") or not page.get("data"):
                return None
            after = str(page["data"][-1]["id"])
        return None

    async def content(self, file_id: str) -> bytes:
        request = HttpRequest(self._url(f"/files/{file_id}/content"), b"", self.headers, "GET")
        return await self.transport.send(request, bytes, raw=True)


def _object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise TypeError(f"expected a JSON object, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------------- submit


def _digest(row_ids: list[str]) -> str:
    return hashlib.sha256("\n".join(row_ids).encode()).hexdigest()[:20]


def _shards(
    engine: RemoteEngine, input_path: str, generation: GenerationParams, endpoint: str, state: BatchJobState
) -> Iterator[tuple[ShardState, bytes]]:
    """Yield (ShardState, request bytes) in input order, within the engine's limits."""
    limit_n = int(getattr(engine, "batch_max_requests", MAX_REQUESTS))
    limit_b = int(getattr(engine, "batch_max_bytes", MAX_BYTES))
    buf, count, first, last, index = io.BytesIO(), 0, -1, -1, 0
    for row in iter_rows(input_path):
        try:
            body = engine.build_body(row.conversation, generation)
        except (InfermuxError, ValueError, OSError) as exc:
            state.build_errors[row.row_id] = str(exc)
            continue
        line = json.dumps({"custom_id": row.row_id, "method": "POST", "url": endpoint, "body": body}).encode() + b"\n"
        if len(line) > limit_b:
            state.build_errors[row.row_id] = f"the request is {len(line)} bytes, over the {limit_b}-byte file limit"
            continue
        if count and (count >= limit_n or buf.tell() + len(line) > limit_b):
            yield ShardState(index, first, last, count, buf.tell()), buf.getvalue()
            buf, count, index = io.BytesIO(), 0, index + 1
        if not count:
            first = row.index
        buf.write(line)
        count, last = count + 1, row.index
    if count:
        yield ShardState(index, first, last, count, buf.tell()), buf.getvalue()


async def asubmit(
    engine: RemoteEngine, input_path: str, output_path: str, generation: GenerationParams, fingerprint: str
) -> BatchJobState:
    row_ids = validate_file(input_path)
    window = (engine.remote_params.batch_completion_window if engine.remote_params else None) or "24h"
    state = BatchJobState.load(output_path)
    async with _api(engine) as api:
        fresh = BatchJobState(
            state_path(output_path), fingerprint, str(Path(input_path).resolve()), api.endpoint, window
        )
        fresh.rows_digest = _digest(row_ids)
        if state is not None and (state.fingerprint, state.job_id) != (fingerprint, fresh.job_id):
            raise ConfigError(
                f"{state.path} records a batch job for another config or input; fetch it with its own config, "
                "or move the file away to start a new job."
            )
        state = state or fresh
        for index, (shard, data) in enumerate(_shards(engine, input_path, generation, api.endpoint, state)):
            if index < len(state.shards):
                known = state.shards[index]
                if (known.first_index, known.last_index, known.requests) != (
                    shard.first_index,
                    shard.last_index,
                    shard.requests,
                ):
                    raise ConfigError(f"{input_path} changed since the batch job in {state.path} was submitted.")
                shard = known
            else:
                state.shards.append(shard)
            await _submit_shard(api, state, shard, data, window)
        state.save()
    return state


async def _submit_shard(api: BatchApi, state: BatchJobState, shard: ShardState, data: bytes, window: str) -> None:
    if shard.batch_id:
        return
    metadata = {"infermux_job": state.job_id, "infermux_shard": str(shard.index)}
    if shard.create_started:  # interrupted after asking for the batch: it may exist already
        found = await api.find(metadata)
        if found is not None:
            shard.batch_id, shard.status = str(found["id"]), found.get("status")
            state.save()
            return
    if not shard.input_file_id:
        shard.input_file_id = await api.upload(f"infermux-{state.job_id}-{shard.index}.jsonl", data)
        state.save()
    shard.create_started = True
    state.save()
    retries = api.transport.settings.max_retries
    for attempt in range(retries + 1):
        try:
            batch = await api.create(shard.input_file_id, window, metadata)
            break
        except RemoteError as exc:
            if not exc.retryable or attempt == retries:
                raise
            found = await api.find(metadata)  # the failed call may have created it anyway
            if found is not None:
                batch = found
                break
            await asyncio.sleep(min(30.0, 2.0**attempt))
    shard.batch_id, shard.status = str(batch["id"]), batch.get("status")
    state.save()


# ---------------------------------------------------------------------------------------- status


async def astatus(engine: RemoteEngine, output_path: str) -> BatchJobState:
    state = BatchJobState.require(output_path)
    async with _api(engine) as api:
        await _refresh(api, state)
    return state


async def _refresh(api: BatchApi, state: BatchJobState) -> None:
    for shard in state.shards:
        if shard.batch_id and not shard.terminal:
            batch = await api.retrieve(shard.batch_id)
            shard.status = batch.get("status")
            shard.output_file_id = batch.get("output_file_id")
            shard.error_file_id = batch.get("error_file_id")
            shard.request_counts = dict(batch.get("request_counts") or {})
            errors = (batch.get("errors") or {}).get("data") or []
            shard.errors = [
                f"{e.get('code')}: {e.get('message')}" + (f" (line {e['line']})" if e.get("line") else "")
                for e in errors
            ]
    state.save()


# ---------------------------------------------------------------------------------------- fetch


async def afetch(engine: RemoteEngine, input_path: str, output_path: str, fingerprint: str) -> BatchFetchReport:
    state = BatchJobState.require(output_path)
    row_ids = validate_file(input_path)
    if state.rows_digest and state.rows_digest != _digest(row_ids):
        raise ConfigError(f"{input_path} is not the input the batch job in {state.path} was submitted with.")
    records: dict[str, dict[str, Any]] = {}
    async with _api(engine) as api:
        await _refresh(api, state)
        for shard in state.shards:
            for file_id in (shard.output_file_id, shard.error_file_id):
                if shard.terminal and file_id:
                    for raw in (await api.content(file_id)).splitlines():
                        if raw.strip():
                            record = json.loads(raw)
                            records[str(record.get("custom_id"))] = record

    def result_for(row: InputRow) -> Conversation | RowError | None:
        result = _result(engine, state, row, records)
        return price_batch_row(engine, result) if isinstance(result, Conversation) else result

    return record_batch_results(input_path, output_path, fingerprint, row_ids, result_for)


def price_batch_row(engine: RemoteEngine, answered: Conversation) -> Conversation:
    """``answered`` with ``metadata["cost_usd"]`` at the provider's batch price, when it is known."""
    from infermux.jobs.cost import PRICE_PROVIDERS, pricing_for

    name = engine_name(engine.engine_type)
    if name.upper() not in PRICE_PROVIDERS:
        return answered
    pricing = pricing_for(name, engine.model_params.model_name)
    cost = pricing.cost(answered.usage, batch=True) if pricing is not None else None
    if cost is not None:
        answered.metadata["cost_usd"] = round(cost, 10)
    return answered


def _result(
    engine: RemoteEngine, state: BatchJobState, row: InputRow, records: dict[str, dict[str, Any]]
) -> Conversation | RowError | None:
    if row.row_id in state.build_errors:
        return RowError(kind="invalid_input", message=state.build_errors[row.row_id])
    record = records.get(row.row_id)
    if record is None:
        shard = next((s for s in state.shards if s.first_index <= row.index <= s.last_index), None)
        if shard is None or not shard.terminal:
            return None
        why = "; ".join(shard.errors) or f"the batch ended {shard.status} before this row ran"
        return RowError(kind="batch_" + str(shard.status), message=why, retryable=True)
    if record.get("error"):
        error = record["error"]
        return RowError(kind="batch_error", message=f"{error.get('code')}: {error.get('message')}", retryable=True)
    response = record.get("response") or {}
    status = int(response.get("status_code") or 0)
    if status != 200:
        message = default_error_message(status, json.dumps(response.get("body")).encode())
        return RowError(
            kind="http_error", message=f"HTTP {status}: {message}", status=status, retryable=status in _RETRYABLE
        )
    try:
        return engine.parse_reply(row.conversation, response["body"])
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        return RowError(kind="malformed_response", message=f"unparsable batch result: {exc}", retryable=True)


# ---------------------------------------------------------------------------------------- wiring


class _api:
    """``async with _api(engine) as api``: a transport for the engine's settings, and the API on it."""

    def __init__(self, engine: RemoteEngine) -> None:
        if not engine.capabilities.batch_api:
            raise ConfigError(f"{engine.name} does not support the OpenAI Batch API (files + batches).")
        engine.check_ready()
        self.engine = engine
        hint = f"Check the key in {engine.api_key_env} (or remote_params.api_key)." if engine.api_key_env else ""
        kwargs: dict[str, Any] = {"secrets": engine._secrets, "auth_hint": hint, "error_message": engine.error_message}
        self.transport: Transport[Any] = Transport(engine.settings, **kwargs)
        self.once: Transport[Any] = Transport(dataclasses.replace(engine.settings, max_retries=0), **kwargs)

    async def __aenter__(self) -> BatchApi:
        await self.transport.__aenter__()
        await self.once.__aenter__()
        return BatchApi(self.transport, self.engine.url, dict(self.engine.headers), self.once)

    async def __aexit__(self, *exc: object) -> None:
        await self.once.__aexit__(*exc)
        await self.transport.__aexit__(*exc)


class BatchApiMixin(BatchJobsMixin):
    """Batch API operations as engine methods (for engines built on :class:`RemoteEngine`)."""

    batch_protocol = sys.modules[__name__]
    batch_max_requests = MAX_REQUESTS
    batch_max_bytes = MAX_BYTES
