"""Anthropic's Message Batches API (``/v1/messages/batches``) for ANTHROPIC: create, poll, results,
cancel, list.

Each row becomes one request ``{"custom_id", "params"}`` (``custom_id`` derived from the row id:
Anthropic allows ``[a-zA-Z0-9_-]{1,64}``; ``params`` = the body the engine would send online); a batch
holds at most 100,000 requests and 256 MB and is created in one call with its requests. Status is
``processing_status`` (``in_progress``, ``canceling``, ``ended``). Each ended batch's results (JSON
Lines, any order) map back by ``custom_id``: ``succeeded`` rows are answered, ``errored``, ``expired``
and ``canceled`` rows are failures (``batch_error``, ``batch_expired``, ``batch_cancelled``;
``errored`` with ``invalid_request_error`` is not worth retrying, the others are answered online by
``infermux batch run`` or a rerun).

Message batches carry no metadata, so an interrupted creation is found again by listing the batches
created since it was asked for with the same number of requests. Results are read from
``/v1/messages/batches/{id}/results`` on the configured server (the key is never sent to another host,
whatever ``results_url`` says). The job itself is :mod:`infermux.jobs.provider_batch`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import TYPE_CHECKING, Any

from infermux.engines.batch_client import BatchInfo, BatchInput, BatchLimits
from infermux.engines.remote.batch_http import HttpBatchClient
from infermux.engines.remote.http.transport import HttpRequest, json_object
from infermux.errors import ErrorKind, RowError

if TYPE_CHECKING:
    from infermux.configs.generation_params import GenerationParams
    from infermux.engines.remote.base import RemoteEngine
    from infermux.types import Conversation

__all__ = ["MessageBatchesClient", "custom_id_for"]

MAX_REQUESTS = 100_000
MAX_BYTES = 256 * 2**20
ENDPOINT = "/v1/messages/batches"
#: Error types of a request that would fail the same way online.
_PERMANENT = frozenset(
    {"invalid_request_error", "authentication_error", "permission_error", "not_found_error", "request_too_large"}
)
_ENVELOPE = len(b'{"requests":[]}')


def custom_id_for(row_id: str) -> str:
    """A ``custom_id`` Anthropic accepts, stable for the row id."""
    return "r" + hashlib.sha256(row_id.encode("utf-8", "surrogatepass")).hexdigest()[:40]


class MessageBatchesClient(HttpBatchClient):
    """Message Batches calls against the server behind an ANTHROPIC engine."""

    can_cancel = True
    can_list = True
    endpoint = ENDPOINT
    completion_window = "24h"
    # Each request is followed by a comma; the requests sit inside {"requests":[...]}.
    limits = BatchLimits(MAX_REQUESTS, MAX_BYTES, separator=1, envelope=_ENVELOPE)

    def __init__(self, engine: RemoteEngine) -> None:
        super().__init__(engine)
        self.root = engine.url.removesuffix("/messages").removesuffix("/v1")
        self.headers = dict(engine.headers)

    # ------------------------------------------------------------------ rows <-> requests
    def custom_id(self, row_id: str) -> str:
        return custom_id_for(row_id)

    def encode(self, custom_id: str, conversation: Conversation, generation: GenerationParams) -> bytes:
        return json.dumps({"custom_id": custom_id, "params": self.body(conversation, generation)}).encode()

    def answer(self, conversation: Conversation, record: Any) -> Conversation | RowError:
        result = record.get("result") or {}
        kind = result.get("type")
        if kind == "succeeded":
            return self.parse(conversation, result["message"])
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

    def missing(self, info: BatchInfo) -> RowError:
        return RowError(ErrorKind.BATCH_FAILED, "the ended batch has no result for this row", retryable=True)

    # ------------------------------------------------------------------ calls
    async def _call(self, method: str, path: str, body: bytes = b"", *, once: bool = False) -> dict[str, Any]:
        transport = self.once if once else self.transport
        return await transport.send(HttpRequest(self.root + ENDPOINT + path, body, self.headers, method), json_object)

    async def _page(self, limit: int, after_id: str = "") -> dict[str, Any]:
        return await self._call("GET", f"?limit={limit}" + (f"&after_id={after_id}" if after_id else ""))

    async def create(self, batch: BatchInput, input_id: str | None) -> BatchInfo:
        body = b'{"requests":[' + b",".join(batch.requests) + b"]}"
        return _info(await self._call("POST", "", body, once=True))  # never blindly retried: it may exist

    async def find(self, batch: BatchInput, pages: int = 10) -> BatchInfo | None:
        """The batch created since ``batch.started_at`` with as many requests."""
        if not batch.started_at:
            return None
        since = dt.datetime.fromisoformat(batch.started_at)
        after = ""
        for _ in range(pages):
            page = await self._page(100, after)
            for found in page.get("data") or []:
                created = dt.datetime.fromisoformat(str(found.get("created_at", "")).replace("Z", "+00:00"))
                if created < since:
                    return None  # most recent first: older batches follow
                if sum((found.get("request_counts") or {}).values()) == len(batch.requests):
                    return _info(found)
            if not page.get("has_more") or not page.get("data"):
                return None
            after = str(page.get("last_id") or page["data"][-1]["id"])
        return None

    async def retrieve(self, batch_id: str) -> BatchInfo:
        return _info(await self._call("GET", f"/{batch_id}"))

    async def results(self, info: BatchInfo) -> dict[str, Any]:
        return await self.jsonl_records(f"{self.root}{ENDPOINT}/{info.id}/results", {})

    async def cancel(self, batch_id: str) -> BatchInfo:
        return _info(await self._call("POST", f"/{batch_id}/cancel"))

    async def list(self, limit: int) -> list[dict[str, Any]]:
        return await self.pages(self._page, limit, 1000)


def _info(batch: dict[str, Any]) -> BatchInfo:
    status = batch.get("processing_status")
    return BatchInfo(str(batch["id"]), status, status == "ended", dict(batch.get("request_counts") or {}))
