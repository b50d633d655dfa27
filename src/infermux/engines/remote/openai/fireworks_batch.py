"""Fireworks AI batch inference jobs for FIREWORKS: the input is a dataset, the results another.

The control plane is ``https://api.fireworks.ai/v1/accounts/{account}/`` (the account id from
``FIREWORKS_ACCOUNT_ID``), beside the inference API the engine answers online from:

* each row is one line ``{"custom_id", "body"}`` (``body`` = the chat-completions body the engine would
  send online); one batch's lines form one dataset file, uploaded in a single request (at most 150 MB);
* :meth:`upload` creates the input dataset ``POST /datasets`` (``datasetId``, ``dataset.userUploaded``)
  and uploads the file ``POST /datasets/{id}:upload``; :meth:`create` creates the job
  ``POST /batchInferenceJobs?batchInferenceJobId=ID`` with ``model``, ``inputDatasetId`` and
  ``outputDatasetId``. The client picks every id (from the job and batch, like ``infermux-<job>-<n>``),
  so a step interrupted before its reply was saved is found by that id, never repeated;
* ``GET /batchInferenceJobs/{id}``: ``state`` ``JOB_STATE_VALIDATING``, ``..._PENDING``, ``..._RUNNING``,
  then ``..._COMPLETED``, ``..._FAILED``, ``..._EXPIRED`` (the 24-hour limit; what was answered is kept)
  or ``..._CANCELLED``; counts in ``jobProgress``;
* results: ``GET /datasets/{output}:getDownloadEndpoint`` names signed URLs (``filenameToSignedUrls``)
  for the results file and the error file, JSON Lines keyed by ``custom_id``; they are fetched without
  the key. Rows without a line fail as expired, cancelled or failed, and are answered online by
  ``infermux batch run``;
* ``GET /batchInferenceJobs`` lists the account's jobs (pages of ``pageSize``, ``nextPageToken``). The
  API has no call to cancel a job.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from infermux.engines.batch_client import BatchInfo, BatchInput, BatchLimits
from infermux.engines.remote.batch_http import HttpBatchClient, jsonl_form
from infermux.engines.remote.http.transport import HttpRequest, default_error_message, json_object
from infermux.errors import ConfigError, ErrorKind, RemoteError, RowError

if TYPE_CHECKING:
    from infermux.configs.generation_params import GenerationParams
    from infermux.engines.remote.base import RemoteEngine
    from infermux.types import Conversation

__all__ = ["ACCOUNT_ENV", "FireworksBatchClient"]

ACCOUNT_ENV = "FIREWORKS_ACCOUNT_ID"
MAX_BYTES = 150 * 2**20  # the single-request dataset upload
MAX_REQUESTS = 100_000  # Fireworks documents no request limit; infermux keeps each dataset to this
_FINAL = {
    "JOB_STATE_COMPLETED": None,
    "JOB_STATE_FAILED": ErrorKind.BATCH_FAILED,
    "JOB_STATE_EXPIRED": ErrorKind.BATCH_EXPIRED,
    "JOB_STATE_CANCELLED": ErrorKind.BATCH_CANCELLED,
}
_RETRYABLE = frozenset({408, 409, 429, 500, 502, 503, 504})


class FireworksBatchClient(HttpBatchClient):
    """Datasets and batch inference jobs against the Fireworks account (see the module docstring)."""

    can_list = True
    completion_window = "24h"
    limits = BatchLimits(MAX_REQUESTS, MAX_BYTES, name="dataset upload limit")

    def __init__(self, engine: RemoteEngine) -> None:
        super().__init__(engine)
        account = os.environ.get(ACCOUNT_ENV, "").strip()  # checked when the client is opened
        parts = urlsplit(engine.url)
        self.endpoint = parts.path
        self.account = account
        self.root = f"{parts.scheme}://{parts.netloc}/v1/accounts/{quote(account, safe='')}"
        self.headers = {k: v for k, v in engine.headers.items() if k.lower() != "content-type"}
        self.model = engine.model_params.model_name

    async def __aenter__(self) -> FireworksBatchClient:
        if not self.account:
            raise ConfigError(f"Fireworks batch jobs belong to an account: set {ACCOUNT_ENV} to your account id.")
        await super().__aenter__()
        return self

    # ------------------------------------------------------------------ rows <-> requests
    def encode(self, custom_id: str, conversation: Conversation, generation: GenerationParams) -> bytes:
        return json.dumps({"custom_id": custom_id, "body": self.body(conversation, generation)}).encode() + b"\n"

    def answer(self, conversation: Conversation, record: Any) -> Conversation | RowError:
        error = record.get("error")
        if error:
            message = error.get("message", error) if isinstance(error, dict) else error
            code = (
                int(error.get("code") or 0) if isinstance(error, dict) and str(error.get("code", "")).isdigit() else 0
            )
            retryable = code in _RETRYABLE or code == 0
            return RowError(
                ErrorKind.BATCH_ERROR, f"{code or 'error'}: {message}", status=code or None, retryable=retryable
            )
        response = record["response"]
        if "status_code" in response:  # an OpenAI-style envelope
            status = int(response.get("status_code") or 0)
            if status != 200:
                text = default_error_message(status, json.dumps(response.get("body")).encode())
                return RowError(ErrorKind.HTTP_ERROR, f"HTTP {status}: {text}", status=status,
                                retryable=status in _RETRYABLE)  # fmt: skip
            response = response["body"]
        return self.parse(conversation, response)

    def missing(self, info: BatchInfo) -> RowError:
        why = "; ".join(info.errors) or f"the job ended {info.status} before this row ran"
        return RowError(_FINAL.get(str(info.status)) or ErrorKind.BATCH_FAILED, why, retryable=True)

    # ------------------------------------------------------------------ calls
    async def _call(self, method: str, path: str, payload: Any = None, *, once: bool = False) -> dict[str, Any]:
        body = b"" if payload is None else json.dumps(payload).encode()
        headers = {**self.headers, "Content-Type": "application/json"} if payload is not None else self.headers
        transport = self.once if once else self.transport
        return await transport.send(HttpRequest(self.root + path, body, headers, method), json_object)

    async def _exists(self, path: str) -> dict[str, Any] | None:
        try:
            return await self._call("GET", path)
        except RemoteError as exc:
            if exc.status == 404:
                return None
            raise

    def _dataset(self, dataset_id: str) -> str:
        return f"accounts/{self.account}/datasets/{dataset_id}"

    async def upload(self, batch: BatchInput) -> str:
        dataset_id = batch.name + "-in"
        found = await self._exists(f"/datasets/{dataset_id}")
        if found is None:
            payload = {"datasetId": dataset_id, "dataset": {"displayName": batch.name, "userUploaded": {},
                                                             "exampleCount": str(len(batch.requests))}}  # fmt: skip
            try:
                await self._call("POST", "/datasets", payload, once=True)
            except RemoteError as exc:
                if exc.status != 409:  # 409: an interrupted run created it
                    raise
        if found is None or found.get("state") != "READY":
            body, content_type = jsonl_form(f"{batch.name}.jsonl", batch.requests)
            headers = {**self.headers, "Content-Type": content_type}
            url = f"{self.root}/datasets/{dataset_id}:upload"
            await self.transport.send(HttpRequest(url, body, headers), json_object)
        return self._dataset(dataset_id)

    async def create(self, batch: BatchInput, input_id: str | None) -> BatchInfo:
        payload = {"displayName": batch.name, "model": self.model, "inputDatasetId": input_id,
                   "outputDatasetId": self._dataset(batch.name + "-out")}  # fmt: skip
        try:
            reply = await self._call(
                "POST", f"/batchInferenceJobs?batchInferenceJobId={batch.name}", payload, once=True
            )
        except RemoteError as exc:
            if not exc.retryable and exc.status != 409:
                raise
            found = await self.find(batch)  # created by an earlier try whose reply was lost
            if found is None:
                raise
            return found
        return _info(reply)

    async def find(self, batch: BatchInput) -> BatchInfo | None:
        found = await self._exists(f"/batchInferenceJobs/{batch.name}")
        return None if found is None else _info(found)

    async def retrieve(self, batch_id: str) -> BatchInfo:
        return _info(await self._call("GET", f"/batchInferenceJobs/{batch_id}"))

    async def results(self, info: BatchInfo) -> dict[str, Any]:
        if not info.output_file_id:
            return {}
        dataset_id = info.output_file_id.rsplit("/", 1)[-1]
        urls = (await self._call("GET", f"/datasets/{dataset_id}:getDownloadEndpoint")).get("filenameToSignedUrls")
        records: dict[str, Any] = {}
        for _name, url in sorted((urls or {}).items()):
            data = await self.transport.send(HttpRequest(url, b"", {}, "GET"), bytes, raw=True)  # signed: no key
            for raw in data.splitlines():
                if raw.strip():
                    record = json.loads(raw)
                    if "custom_id" in record:
                        records[str(record["custom_id"])] = record
        return records

    async def list(self, limit: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        token = ""
        while len(out) < limit:
            query = f"?pageSize={min(200, limit - len(out))}&orderBy=createTime%20desc" + (
                f"&pageToken={token}" if token else ""
            )
            page = await self._call("GET", "/batchInferenceJobs" + query)
            out.extend(page.get("batchInferenceJobs") or [])
            token = str(page.get("nextPageToken") or "")
            if not token or not page.get("batchInferenceJobs"):
                break
        for job in out:  # the CLI shows ``id`` and ``status``
            job.setdefault("id", str(job.get("name", "")).rsplit("/", 1)[-1])
            job.setdefault("status", job.get("state"))
            job.setdefault("created_at", job.get("createTime"))
        return out[:limit]


def _info(job: dict[str, Any]) -> BatchInfo:
    state = job.get("state")
    progress = job.get("jobProgress") or {}
    counts = {"total": progress.get("totalInputRequests"), "completed": progress.get("successfullyProcessedRequests"),
              "failed": progress.get("failedRequests")}  # fmt: skip
    message = (job.get("status") or {}).get("message")
    return BatchInfo(
        str(job["name"]).rsplit("/", 1)[-1],
        state,
        state in _FINAL,
        {k: int(v) for k, v in counts.items() if v is not None},
        [str(message)] if message and state != "JOB_STATE_COMPLETED" else [],
        job.get("outputDatasetId") or None,
    )
