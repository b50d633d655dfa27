"""The OpenAI Batch API (``/v1/files`` + ``/v1/batches``) for OPENAI and any server that implements it.

Each row becomes one line of a JSONL input file, ``{"custom_id": <row id>, "method": "POST", "url":
"/v1/chat/completions", "body": <the body the engine would send online>}``; a file holds at most
50,000 requests and 200 MB (``batch_max_requests``, ``batch_max_bytes`` of the engine). Each file is
uploaded (purpose ``batch``) and given one batch, whose ``metadata`` names its job and shard, so a
creation interrupted before its id was saved is found again by listing. Results come back as output
and error files (any order), one ``{"custom_id", "response": {"status_code", "body"}, "error"}`` each.
``POST /v1/batches/{id}/cancel`` stops a batch (``cancelling``, then ``cancelled`` with what it answered
so far in its files); ``GET /v1/batches?limit=&after=`` lists the account's batches, most recent first.

The job itself (record, resume, rows, recording) is :mod:`infermux.jobs.provider_batch`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from infermux.engines.batch_client import BatchInfo, BatchInput, BatchLimits
from infermux.engines.remote.batch_http import HttpBatchClient, jsonl_form
from infermux.engines.remote.http.transport import HttpRequest, default_error_message, json_object
from infermux.errors import RemoteError, RowError

if TYPE_CHECKING:
    from infermux.configs.generation_params import GenerationParams
    from infermux.engines.remote.base import RemoteEngine
    from infermux.types import Conversation

__all__ = ["MAX_BYTES", "MAX_REQUESTS", "OpenAIBatchClient"]

MAX_REQUESTS = 50_000
MAX_BYTES = 200 * 2**20
_RETRYABLE = frozenset({408, 409, 429, 500, 502, 503, 504})
_FINAL = frozenset({"completed", "failed", "expired", "cancelled"})


class OpenAIBatchClient(HttpBatchClient):
    """Files and Batches calls against the server behind an OpenAI-compatible engine."""

    can_cancel = True
    can_list = True
    #: The ``purpose`` of an uploaded batch input file.
    purpose = "batch"

    def __init__(self, engine: RemoteEngine) -> None:
        super().__init__(engine)
        parts = urlsplit(engine.url)
        self.endpoint = parts.path  # e.g. /v1/chat/completions: the batch endpoint and each line's url
        root = parts.path.removesuffix("/chat/completions")
        self._url: Callable[[str], str] = lambda p: urlunsplit((parts.scheme, parts.netloc, root + p, parts.query, ""))
        self.headers = {k: v for k, v in engine.headers.items() if k.lower() != "content-type"}
        params = engine.remote_params
        self.completion_window = (params.batch_completion_window if params else None) or "24h"
        self.limits = BatchLimits(
            int(getattr(engine, "batch_max_requests", MAX_REQUESTS)),
            int(getattr(engine, "batch_max_bytes", MAX_BYTES)),
            name="file limit",
        )

    # ------------------------------------------------------------------ rows <-> requests
    def encode(self, custom_id: str, conversation: Conversation, generation: GenerationParams) -> bytes:
        body = self.body(conversation, generation)
        line = {"custom_id": custom_id, "method": "POST", "url": self.endpoint, "body": body}
        return json.dumps(line).encode() + b"\n"

    def answer(self, conversation: Conversation, record: Any) -> Conversation | RowError:
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
        return self.parse(conversation, response["body"])

    def missing(self, info: BatchInfo) -> RowError:
        why = "; ".join(info.errors) or f"the batch ended {info.status} before this row ran"
        return RowError(kind="batch_" + str(info.status), message=why, retryable=True)

    # ------------------------------------------------------------------ calls
    async def _json(self, method: str, path: str, payload: Any = None, *, once: bool = False) -> dict[str, Any]:
        body = b"" if payload is None else json.dumps(payload).encode()
        headers = {**self.headers, "Content-Type": "application/json"} if payload is not None else self.headers
        transport = self.once if once else self.transport
        return await transport.send(HttpRequest(self._url(path), body, headers, method), json_object)

    async def upload(self, batch: BatchInput) -> str:
        body, content_type = jsonl_form(f"{batch.name}.jsonl", batch.requests, purpose=self.purpose)
        headers = {**self.headers, "Content-Type": content_type}
        reply = await self.transport.send(HttpRequest(self._url("/files"), body, headers), json_object)
        return str(reply["id"])

    async def create(self, batch: BatchInput, input_id: str | None) -> BatchInfo:
        payload = {"input_file_id": input_id, "endpoint": self.endpoint, "completion_window": self.completion_window}
        retries = self.transport.settings.max_retries
        for attempt in range(retries + 1):
            try:
                return _info(await self._json("POST", "/batches", {**payload, "metadata": batch.tag}, once=True))
            except RemoteError as exc:
                if not exc.retryable or attempt == retries:
                    raise
                found = await self.find(batch)  # the failed call may have created it anyway
                if found is not None:
                    return found
                await asyncio.sleep(min(30.0, 2.0**attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def find(self, batch: BatchInput, pages: int = 20) -> BatchInfo | None:
        """The most recent batch whose metadata includes the batch's tag (searching ``pages`` pages)."""
        after = ""
        for _ in range(pages):
            page = await self._json("GET", "/batches?limit=100" + (f"&after={after}" if after else ""))
            for found in page.get("data") or []:
                if all((found.get("metadata") or {}).get(k) == v for k, v in batch.tag.items()):
                    return _info(found)
            if not page.get("has_more") or not page.get("data"):
                return None
            after = str(page["data"][-1]["id"])
        return None

    async def retrieve(self, batch_id: str) -> BatchInfo:
        return _info(await self._json("GET", f"/batches/{batch_id}"))

    async def results(self, info: BatchInfo) -> dict[str, Any]:
        records: dict[str, Any] = {}
        for file_id in (info.output_file_id, info.error_file_id):
            if file_id:
                await self.jsonl_records(self._url(f"/files/{file_id}/content"), records)
        return records

    async def cancel(self, batch_id: str) -> BatchInfo:
        return _info(await self._json("POST", f"/batches/{batch_id}/cancel"))

    async def list(self, limit: int) -> list[dict[str, Any]]:
        async def page(size: int, after: str) -> dict[str, Any]:
            return await self._json("GET", f"/batches?limit={size}" + (f"&after={after}" if after else ""))

        return await self.pages(page, limit, 100)


def _info(batch: dict[str, Any]) -> BatchInfo:
    errors = (batch.get("errors") or {}).get("data") or []
    status = batch.get("status")
    return BatchInfo(
        str(batch["id"]),
        status,
        status in _FINAL,
        dict(batch.get("request_counts") or {}),
        [f"{e.get('code')}: {e.get('message')}" + (f" (line {e['line']})" if e.get("line") else "") for e in errors],
        batch.get("output_file_id"),
        batch.get("error_file_id"),
    )
