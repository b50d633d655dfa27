"""Together AI's Batch API for TOGETHER: OpenAI-style files + batches, with Together's differences.

* Each input line is ``{"custom_id", "body"}`` (no ``method``/``url``); ``custom_id`` is at most 64
  characters (a longer row id is replaced by a stable digest of it). A file holds at most 50,000 requests
  and 100 MB, and is uploaded to ``/v1/files`` with purpose ``batch-api``.
* ``POST /v1/batches`` takes ``input_file_id``, ``endpoint``, ``completion_window`` and ``model_id`` and
  answers ``{"job": <batch>, "warning"}``; ``GET /v1/batches/{id}`` answers the batch itself. A batch
  carries no metadata, so a creation interrupted before its id was saved is found again by its input
  file (uploaded once and recorded before the batch is asked for).
* Status words are upper case: ``VALIDATING``, ``IN_PROGRESS``, then ``COMPLETED``, ``FAILED``,
  ``EXPIRED`` (past the 24 h deadline) or ``CANCELLED``; progress is a percentage, not request counts;
  ``error`` is one string.
* Results: the output file has a line per answered request (``{"custom_id", "response": {"status_code",
  "body"}}``), the error file a line per failed one (the ``custom_id`` and its failure); an expired or
  cancelled batch keeps what it answered, and its other rows have no line (answered online by
  ``infermux batch run``).
* ``POST /v1/batches/{id}/cancel`` (while validating or in progress) and ``GET /v1/batches`` (a JSON
  array, no pages).
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from infermux.engines.batch_client import BatchInfo, BatchInput, BatchLimits
from infermux.engines.remote.http.transport import HttpRequest
from infermux.engines.remote.openai.batch_api import OpenAIBatchClient
from infermux.errors import ErrorKind, RemoteError, RowError

if TYPE_CHECKING:
    from infermux.configs.generation_params import GenerationParams
    from infermux.engines.remote.base import RemoteEngine
    from infermux.types import Conversation

__all__ = ["MAX_BYTES", "MAX_REQUESTS", "TogetherBatchClient"]

MAX_REQUESTS = 50_000
MAX_BYTES = 100 * 2**20
MAX_CUSTOM_ID = 64
_FINAL = frozenset({"COMPLETED", "FAILED", "EXPIRED", "CANCELLED"})
#: Error codes of a request that would fail the same way online.
_PERMANENT = frozenset({"invalid_request", "invalid_request_error", "bad_request", "400"})


class TogetherBatchClient(OpenAIBatchClient):
    """Together's Files and Batches calls (see the module docstring)."""

    purpose = "batch-api"

    def __init__(self, engine: RemoteEngine) -> None:
        super().__init__(engine)
        self.model = engine.model_params.model_name
        self.completion_window = "24h"  # Together's only window
        self.limits = BatchLimits(
            min(int(getattr(engine, "batch_max_requests", MAX_REQUESTS)), MAX_REQUESTS),
            min(int(getattr(engine, "batch_max_bytes", MAX_BYTES)), MAX_BYTES),
            name="file limit",
        )

    # ------------------------------------------------------------------ rows <-> requests
    def custom_id(self, row_id: str) -> str:
        if len(row_id) <= MAX_CUSTOM_ID:
            return row_id
        return "r-" + hashlib.sha256(row_id.encode("utf-8", "surrogatepass")).hexdigest()[:40]

    def encode(self, custom_id: str, conversation: Conversation, generation: GenerationParams) -> bytes:
        return json.dumps({"custom_id": custom_id, "body": self.body(conversation, generation)}).encode() + b"\n"

    def answer(self, conversation: Conversation, record: Any) -> Conversation | RowError:
        error = record.get("error")
        if error and not record.get("response"):
            if isinstance(error, dict):
                code, message = str(error.get("code") or error.get("type") or ""), str(error.get("message") or "")
            else:
                code, message = "", str(error)
            text = f"{code}: {message}" if code else message
            return RowError(ErrorKind.BATCH_ERROR, text, retryable=code not in _PERMANENT)
        return super().answer(conversation, record)

    def missing(self, info: BatchInfo) -> RowError:
        kind = {"EXPIRED": ErrorKind.BATCH_EXPIRED, "CANCELLED": ErrorKind.BATCH_CANCELLED}
        why = "; ".join(info.errors) or f"the batch ended {info.status} before this row ran"
        return RowError(kind.get(str(info.status), ErrorKind.BATCH_FAILED), why, retryable=True)

    # ------------------------------------------------------------------ calls
    async def create(self, batch: BatchInput, input_id: str | None) -> BatchInfo:
        payload = {
            "input_file_id": input_id,
            "endpoint": self.endpoint,
            "completion_window": self.completion_window,
            "model_id": self.model,
        }
        try:
            reply = await self._json("POST", "/batches", payload, once=True)
        except RemoteError as exc:
            if not exc.retryable:
                raise
            found = await self.find(BatchInput(batch.name, batch.requests, batch.tag, input_id=input_id))
            if found is None:
                raise
            return found
        return _info(reply.get("job") or reply)

    async def find(self, batch: BatchInput, pages: int = 1) -> BatchInfo | None:
        """The batch made from the batch's uploaded input file, if any."""
        if not batch.input_id:
            return None
        for found in await self._batches():
            if found.get("input_file_id") == batch.input_id:
                return _info(found)
        return None

    async def _batches(self) -> list[dict[str, Any]]:
        request = HttpRequest(self._url("/batches"), b"", self.headers, "GET")
        reply = json.loads(await self.transport.send(request, bytes, raw=True))
        if isinstance(reply, dict):  # tolerate a wrapped list
            reply = reply.get("data") or []
        return [b for b in reply if isinstance(b, dict)]

    async def retrieve(self, batch_id: str) -> BatchInfo:
        return _info(await self._json("GET", f"/batches/{batch_id}"))

    async def cancel(self, batch_id: str) -> BatchInfo:
        return _info(await self._json("POST", f"/batches/{batch_id}/cancel"))

    async def list(self, limit: int) -> list[dict[str, Any]]:
        batches = await self._batches()
        batches.sort(key=lambda b: str(b.get("created_at") or ""), reverse=True)
        return batches[:limit]


def _info(batch: dict[str, Any]) -> BatchInfo:
    status = batch.get("status")
    return BatchInfo(
        str(batch["id"]),
        status,
        status in _FINAL,
        {},  # Together reports a percentage (``progress``), not request counts
        [str(batch["error"])] if batch.get("error") else [],
        batch.get("output_file_id") or None,
        batch.get("error_file_id") or None,
    )
