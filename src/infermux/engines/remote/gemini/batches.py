"""The Gemini API's Batch Mode for GOOGLE_GEMINI: inline requests, or a JSONL file for large batches.

* Each row is one ``GenerateContentRequest`` (the body the engine would send online) keyed by its row id.
  A batch whose requests fit in 20 MB goes inline: ``POST /v1beta/models/{model}:batchGenerateContent``
  with ``batch.inputConfig.requests.requests = [{"request", "metadata": {"key"}}]``; a larger one (up to
  2 GB) is first uploaded as a JSONL file of ``{"key", "request"}`` lines through the Files API
  (``media.upload``: ``POST /upload/v1beta/files?uploadType=multipart``, a ``multipart/related`` body of
  the file's metadata then its bytes) and named by ``batch.inputConfig.fileName``.
* Creation answers a long-running operation ``{"name": "batches/...", "metadata": <batch>, "done"}``;
  ``GET /v1beta/batches/{id}`` polls it. The batch's ``state`` is ``BATCH_STATE_PENDING``,
  ``BATCH_STATE_RUNNING``, then ``BATCH_STATE_SUCCEEDED``, ``BATCH_STATE_FAILED``,
  ``BATCH_STATE_CANCELLED`` or ``BATCH_STATE_EXPIRED`` (after 48 hours); ``batchStats`` counts requests.
* Results: ``response.inlinedResponses.inlinedResponses`` (each a ``response`` or an ``error`` status,
  with its ``metadata.key``) or ``response.responsesFile``, downloaded from
  ``/download/v1beta/{file}:download?alt=media`` (lines ``{"key", "response" | "error"}``). Rows without
  a result fail as expired, cancelled or failed and are answered online by ``infermux batch run``.
* The batch's ``displayName`` names its job and batch, so an interrupted creation is found again by
  listing (``GET /v1beta/batches``, pages of ``pageSize`` with ``nextPageToken``); ``POST
  /v1beta/batches/{id}:cancel`` cancels.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from infermux.engines.batch_client import BatchInfo, BatchInput, BatchLimits
from infermux.engines.remote.batch_http import HttpBatchClient
from infermux.engines.remote.http.transport import HttpRequest, json_object
from infermux.errors import ErrorKind, RemoteError, RowError

if TYPE_CHECKING:
    from infermux.configs.generation_params import GenerationParams
    from infermux.engines.remote.base import RemoteEngine
    from infermux.types import Conversation

__all__ = ["INLINE_BYTES", "GeminiBatchClient"]

INLINE_BYTES = 20 * 2**20  # requests sent inline (larger batches go as a file)
MAX_BYTES = 2 * 2**30  # one input file
MAX_REQUESTS = 100_000  # Google documents a size limit only; infermux keeps a batch to this
_FINAL = {
    "BATCH_STATE_SUCCEEDED": ErrorKind.BATCH_FAILED,  # a row without a result in a finished batch
    "BATCH_STATE_FAILED": ErrorKind.BATCH_FAILED,
    "BATCH_STATE_CANCELLED": ErrorKind.BATCH_CANCELLED,
    "BATCH_STATE_EXPIRED": ErrorKind.BATCH_EXPIRED,
}
#: google.rpc codes of a request that would fail the same way online.
_PERMANENT = frozenset({3, 5, 7, 9, 16})  # INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, ...


class GeminiBatchClient(HttpBatchClient):
    """Batch Mode calls against the Gemini API (see the module docstring)."""

    can_cancel = True
    can_list = True
    completion_window = "48h"
    limits = BatchLimits(MAX_REQUESTS, MAX_BYTES, separator=1, name="input file limit")
    inline_bytes = INLINE_BYTES

    def __init__(self, engine: RemoteEngine) -> None:
        super().__init__(engine)
        parts = urlsplit(engine.url)
        self.endpoint = parts.path.replace(":generateContent", ":batchGenerateContent")
        version = parts.path.split("/models/", 1)[0]  # e.g. /v1beta
        self.host = f"{parts.scheme}://{parts.netloc}"
        self.root = self.host + version
        self.version = version
        self.headers = dict(engine.headers)

    # ------------------------------------------------------------------ rows <-> requests
    def encode(self, custom_id: str, conversation: Conversation, generation: GenerationParams) -> bytes:
        return json.dumps({"key": custom_id, "request": self.body(conversation, generation)}).encode()

    def answer(self, conversation: Conversation, record: Any) -> Conversation | RowError:
        error = record.get("error") or record.get("status")
        if error and not record.get("response"):
            code = int(error.get("code") or 0) if isinstance(error, dict) else 0
            message = error.get("message", "") if isinstance(error, dict) else str(error)
            return RowError(ErrorKind.BATCH_ERROR, f"{code}: {message}", retryable=code not in _PERMANENT)
        return self.parse(conversation, record["response"])

    def missing(self, info: BatchInfo) -> RowError:
        why = "; ".join(info.errors) or f"the batch ended {info.status} before this row ran"
        return RowError(_FINAL.get(str(info.status), ErrorKind.BATCH_FAILED), why, retryable=True)

    # ------------------------------------------------------------------ calls
    async def _call(self, method: str, url: str, payload: Any = None, *, once: bool = False) -> dict[str, Any]:
        body = b"" if payload is None else json.dumps(payload).encode()
        transport = self.once if once else self.transport
        return await transport.send(HttpRequest(url, body, self.headers, method), json_object)

    async def upload(self, batch: BatchInput) -> str | None:
        size = sum(len(r) + 1 for r in batch.requests)
        if size <= self.inline_bytes:
            return None  # sent inline with the creation
        data = b"\n".join(batch.requests) + b"\n"
        boundary = f"infermux-{uuid.uuid4().hex}"
        meta = json.dumps({"file": {"displayName": batch.name, "mimeType": "application/jsonl"}})
        body = (
            (
                f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{meta}\r\n"
                f"--{boundary}\r\nContent-Type: application/jsonl\r\n\r\n"
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        headers = {**self.headers, "Content-Type": f"multipart/related; boundary={boundary}"}
        url = f"{self.host}/upload{self.version}/files?uploadType=multipart"
        done = await self.transport.send(HttpRequest(url, body, headers), json_object)
        return str(done["file"]["name"])

    async def create(self, batch: BatchInput, input_id: str | None) -> BatchInfo:
        if input_id:
            source: dict[str, Any] = {"fileName": input_id}
        else:
            source = {"requests": {"requests": [_inline(r) for r in batch.requests]}}
        payload = {"batch": {"displayName": batch.name, "inputConfig": source}}
        try:
            return _info(await self._call("POST", self.host + self.endpoint, payload, once=True))
        except RemoteError as exc:
            if not exc.retryable:
                raise
            found = await self.find(batch)  # the failed call may have created it anyway
            if found is None:
                raise
            return found

    async def find(self, batch: BatchInput, pages: int = 10) -> BatchInfo | None:
        token = ""
        for _ in range(pages):
            query = "?pageSize=100" + (f"&pageToken={token}" if token else "")
            page = await self._call("GET", f"{self.root}/batches{query}")
            for operation in page.get("operations") or []:
                if (operation.get("metadata") or {}).get("displayName") == batch.name:
                    return _info(operation)
            token = str(page.get("nextPageToken") or "")
            if not token:
                return None
        return None

    async def retrieve(self, batch_id: str) -> BatchInfo:
        return _info(await self._call("GET", f"{self.root}/{batch_id}"))

    async def results(self, info: BatchInfo) -> dict[str, Any]:
        operation = await self._call("GET", f"{self.root}/{info.id}")
        response = operation.get("response") or (operation.get("metadata") or {}).get("output") or {}
        records: dict[str, Any] = {}
        inlined = (response.get("inlinedResponses") or {}).get("inlinedResponses") or []
        for item in inlined:
            records[str((item.get("metadata") or {}).get("key"))] = item
        if response.get("responsesFile"):
            url = f"{self.host}/download{self.version}/{response['responsesFile']}:download?alt=media"
            data = await self.transport.send(HttpRequest(url, b"", self.headers, "GET"), bytes, raw=True)
            for raw in data.splitlines():
                if raw.strip():
                    record = json.loads(raw)
                    records[str(record.get("key"))] = record
        return records

    async def cancel(self, batch_id: str) -> BatchInfo:
        await self._call("POST", f"{self.root}/{batch_id}:cancel", {})
        return await self.retrieve(batch_id)

    async def list(self, limit: int) -> list[dict[str, Any]]:
        async def fetch(size: int, token: str) -> dict[str, Any]:
            query = f"?pageSize={size}" + (f"&pageToken={quote(token)}" if token else "")  # tokens may hold = or +
            return await self._call("GET", f"{self.root}/batches{query}")

        operations = await self.token_pages(fetch, "operations", limit, 100)
        return [{"id": operation.get("name"), "status": meta.get("state"), "created_at": meta.get("createTime"),
                 "request_counts": _counts(meta)}
                for operation, meta in ((o, o.get("metadata") or {}) for o in operations)]  # fmt: skip


def _inline(request: bytes) -> dict[str, Any]:
    line = json.loads(request)
    return {"request": line["request"], "metadata": {"key": line["key"]}}


def _counts(meta: dict[str, Any]) -> dict[str, int]:
    stats = meta.get("batchStats") or {}
    names = {"requestCount": "total", "successfulRequestCount": "completed", "failedRequestCount": "failed"}
    return {name: int(stats[key]) for key, name in names.items() if key in stats}


def _info(operation: dict[str, Any]) -> BatchInfo:
    meta = operation.get("metadata") or {}
    state = meta.get("state")
    error = operation.get("error")
    return BatchInfo(
        str(operation["name"]),
        state,
        state in _FINAL,
        _counts(meta),
        [f"{error.get('code')}: {error.get('message')}"] if error else [],
    )
