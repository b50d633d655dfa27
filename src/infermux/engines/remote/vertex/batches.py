"""Vertex AI batch prediction jobs for GOOGLE_VERTEX: Gemini requests in, predictions out, in Cloud Storage.

Read from Vertex AI's ``projects.locations.batchPredictionJobs`` reference and its "batch prediction from
Cloud Storage" guide:

* Batch prediction for Gemini takes the Gemini API's request format (not the OpenAI-compatible one the
  engine uses online): each row is one line ``{"request": GenerateContentRequest}``, the body GOOGLE_GEMINI
  would send, whose ``labels`` carry ``infermux_row: <custom id>``. Output order is not kept and each
  output line echoes its ``request``: its label names the row.
* :meth:`upload` writes the batch's lines to Cloud Storage, ``<VERTEX_BATCH_GCS_URI>/<batch name>/input.jsonl``,
  through the JSON API (``POST /upload/storage/v1/b/{bucket}/o?uploadType=media&name=...``; the host is
  ``https://storage.googleapis.com``, or ``STORAGE_EMULATOR_HOST`` where set, as Google's clients read it).
* :meth:`create`: ``POST {parent}/batchPredictionJobs`` with ``displayName`` (the batch name), ``model``
  ``publishers/google/models/{model}``, ``inputConfig {instancesFormat: jsonl, gcsSource {uris}}`` and
  ``outputConfig {predictionsFormat: jsonl, gcsDestination {outputUriPrefix}}``; ``{parent}`` is
  ``.../projects/{project}/locations/{region}`` from the engine's URL. A creation whose reply was lost is
  found by listing with ``filter=display_name="..."``.
* ``GET {job name}``: ``state`` ``JOB_STATE_QUEUED``, ``_PENDING``, ``_RUNNING``, ``_UPDATING``,
  ``_PAUSED``, ``_CANCELLING``, then ``_SUCCEEDED``, ``_PARTIALLY_SUCCEEDED``, ``_FAILED``,
  ``_CANCELLED`` or ``_EXPIRED``; ``completionStats`` counts; ``outputInfo.gcsOutputDirectory`` where
  the predictions go; ``error`` why a job failed. A job stopped early keeps the rows it finished.
* Results: the ``*.jsonl`` objects under the output directory (``predictions.jsonl``), lines
  ``{"request", "response", "status": ""}``, or ``{"request", "status": "<why it failed>"}`` for a
  failed row. Rows without a line fail as expired, cancelled or failed; ``infermux batch run`` answers
  them online.
* ``POST {job name}:cancel``; ``GET {parent}/batchPredictionJobs`` lists (``pageSize``, ``pageToken``).
* Auth: the engine's Google OAuth token (``Authorization: Bearer``), for Vertex and Cloud Storage alike.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from infermux.engines.batch_client import BatchInfo, BatchInput, BatchLimits
from infermux.engines.remote.batch_http import HttpBatchClient
from infermux.engines.remote.gemini.engine import gemini_body, gemini_reply
from infermux.engines.remote.http.transport import HttpRequest, json_object
from infermux.errors import ConfigError, ErrorKind, RemoteError, RowError

if TYPE_CHECKING:
    from infermux.configs.generation_params import GenerationParams
    from infermux.engines.remote.vertex.engine import GoogleVertexInferenceEngine
    from infermux.types import Conversation

__all__ = ["BUCKET_ENV", "ROW_LABEL", "VertexBatchClient"]

BUCKET_ENV = "VERTEX_BATCH_GCS_URI"
ROW_LABEL = "infermux_row"
STORAGE = "https://storage.googleapis.com"
MAX_REQUESTS = 200_000  # requests per batch prediction job for Gemini
MAX_BYTES = 2**30  # one input file in Cloud Storage
_FINAL = {
    "JOB_STATE_SUCCEEDED": ErrorKind.BATCH_FAILED,  # a row without a line in a finished job
    "JOB_STATE_PARTIALLY_SUCCEEDED": ErrorKind.BATCH_FAILED,
    "JOB_STATE_FAILED": ErrorKind.BATCH_FAILED,
    "JOB_STATE_CANCELLED": ErrorKind.BATCH_CANCELLED,
    "JOB_STATE_EXPIRED": ErrorKind.BATCH_EXPIRED,
}
#: Statuses of a row that would fail the same way online (the request itself is wrong).
_PERMANENT = re.compile(r"\b(400|403|404|INVALID_ARGUMENT|PERMISSION_DENIED|NOT_FOUND|Bad Request)\b")


class VertexBatchClient(HttpBatchClient):
    """Batch prediction jobs against Vertex AI, files in Cloud Storage (see the module docstring)."""

    can_cancel = True
    can_list = True
    completion_window = "24h"
    limits = BatchLimits(MAX_REQUESTS, MAX_BYTES, separator=1, name="input file limit")

    def __init__(self, engine: GoogleVertexInferenceEngine) -> None:
        super().__init__(engine)
        self.vertex = engine
        url = engine.url
        if "/endpoints/" not in url:
            raise ConfigError(
                f"GOOGLE_VERTEX batches need the Vertex URL .../projects/<project>/locations/<region>/endpoints/...; "
                f"remote_params.api_url gives {url!r}."
            )
        self.parent = url.split("/endpoints/", 1)[0]
        self.endpoint = urlsplit(self.parent).path + "/batchPredictionJobs"
        self.headers = {"Content-Type": "application/json"}
        self.model = engine.model_params.model_name.rsplit("/", 1)[-1]
        self.gcs_uri = os.environ.get(BUCKET_ENV, "").strip().rstrip("/")
        host = os.environ.get("STORAGE_EMULATOR_HOST", "").strip().rstrip("/")
        self.storage = (host if "://" in host else f"http://{host}") if host else STORAGE

    async def __aenter__(self) -> VertexBatchClient:
        if not self.gcs_uri.startswith("gs://") or len(self.gcs_uri) <= len("gs://"):
            raise ConfigError(
                f"GOOGLE_VERTEX batches read and write Cloud Storage: set {BUCKET_ENV} to a gs://bucket/prefix "
                "the Vertex AI service agent may read and write."
            )
        await super().__aenter__()
        return self

    # ------------------------------------------------------------------ rows <-> requests
    def custom_id(self, row_id: str) -> str:
        # a label value: lower-case letters and digits, under 64 characters
        return "r" + hashlib.sha256(row_id.encode("utf-8", "surrogatepass")).hexdigest()[:40]

    def encode(self, custom_id: str, conversation: Conversation, generation: GenerationParams) -> bytes:
        request = gemini_body(conversation, generation, self.vertex.model_params.model_kwargs)
        request["labels"] = {ROW_LABEL: custom_id}
        return json.dumps({"request": request}).encode()

    def answer(self, conversation: Conversation, record: Any) -> Conversation | RowError:
        status = record.get("status")
        if status or "response" not in record:
            why = str(status or "no response")
            return RowError(ErrorKind.BATCH_ERROR, why[:2000], retryable=not _PERMANENT.search(why))
        return gemini_reply(conversation, record["response"], self.vertex.generation_params)

    def missing(self, info: BatchInfo) -> RowError:
        why = "; ".join(info.errors) or f"the job ended {info.status} before this row ran"
        return RowError(_FINAL.get(str(info.status), ErrorKind.BATCH_FAILED), why, retryable=True)

    # ------------------------------------------------------------------ calls
    async def _headers(self, content_type: str = "application/json") -> dict[str, str]:
        token = await self.vertex.tokens.token()
        return {"Content-Type": content_type, "Authorization": f"Bearer {token}"}

    async def _call(self, method: str, url: str, payload: Any = None, *, once: bool = False) -> dict[str, Any]:
        body = b"" if payload is None else json.dumps(payload).encode()
        transport = self.once if once else self.transport
        return await transport.send(HttpRequest(url, body, await self._headers(), method), json_object)

    def _root(self) -> str:
        parts = urlsplit(self.parent)
        return f"{parts.scheme}://{parts.netloc}"

    def _gcs(self, name: str) -> tuple[str, str]:
        bucket, _, prefix = self.gcs_uri.removeprefix("gs://").partition("/")
        return bucket, f"{prefix}/{name}".lstrip("/")

    async def upload(self, batch: BatchInput) -> str:
        bucket, key = self._gcs(f"{batch.name}/input.jsonl")
        url = f"{self.storage}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={quote(key, safe='')}"
        data = b"\n".join(batch.requests) + b"\n"
        headers = await self._headers("application/octet-stream")
        await self.transport.send(HttpRequest(url, data, headers), json_object)  # same name: a retry overwrites
        return f"gs://{bucket}/{key}"

    async def create(self, batch: BatchInput, input_id: str | None) -> BatchInfo:
        bucket, key = self._gcs(f"{batch.name}/output")
        payload = {
            "displayName": batch.name,
            "model": f"publishers/google/models/{self.model}",
            "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": [input_id]}},
            "outputConfig": {
                "predictionsFormat": "jsonl",
                "gcsDestination": {"outputUriPrefix": f"gs://{bucket}/{key}"},
            },
            "labels": {k: v.lower() for k, v in batch.tag.items()},
        }
        try:
            return _info(await self._call("POST", f"{self.parent}/batchPredictionJobs", payload, once=True))
        except RemoteError as exc:
            if not exc.retryable:
                raise
            found = await self.find(batch)  # the failed call may have created it anyway
            if found is None:
                raise
            return found

    async def find(self, batch: BatchInput) -> BatchInfo | None:
        query = "?filter=" + quote(f'display_name="{batch.name}"', safe="")
        page = await self._call("GET", f"{self.parent}/batchPredictionJobs{query}")
        for job in page.get("batchPredictionJobs") or []:
            if job.get("displayName") == batch.name:
                return _info(job)
        return None

    async def retrieve(self, batch_id: str) -> BatchInfo:
        return _info(await self._call("GET", f"{self._root()}{_version(self.parent)}/{batch_id}"))

    async def results(self, info: BatchInfo) -> dict[str, Any]:
        if not info.output_file_id:
            return {}
        bucket, _, prefix = info.output_file_id.removeprefix("gs://").partition("/")
        listing = f"{self.storage}/storage/v1/b/{bucket}/o?prefix={quote(prefix.rstrip('/') + '/', safe='')}"
        names = [str(o["name"]) for o in (await self._call("GET", listing)).get("items") or []]
        records: dict[str, Any] = {}
        for name in sorted(n for n in names if n.endswith(".jsonl")):
            url = f"{self.storage}/storage/v1/b/{bucket}/o/{quote(name, safe='')}?alt=media"
            request = HttpRequest(url, b"", await self._headers(), "GET")
            for raw in (await self.transport.send(request, bytes, raw=True)).splitlines():
                if raw.strip():
                    record = json.loads(raw)
                    row = ((record.get("request") or {}).get("labels") or {}).get(ROW_LABEL)
                    if row:
                        records[str(row)] = record
        return records

    async def cancel(self, batch_id: str) -> BatchInfo:
        await self._call("POST", f"{self._root()}{_version(self.parent)}/{batch_id}:cancel", {})
        return await self.retrieve(batch_id)

    async def list(self, limit: int) -> list[dict[str, Any]]:
        async def fetch(size: int, token: str) -> dict[str, Any]:
            query = f"?pageSize={size}" + (f"&pageToken={quote(token)}" if token else "")
            return await self._call("GET", f"{self.parent}/batchPredictionJobs{query}")

        jobs = await self.token_pages(fetch, "batchPredictionJobs", limit, 100)
        return [{"id": info.id, "status": info.status, "created_at": job.get("createTime"),
                 "display_name": job.get("displayName"), "request_counts": info.request_counts}
                for job, info in ((job, _info(job)) for job in jobs)]  # fmt: skip


def _version(parent: str) -> str:
    """The API version path of ``parent`` (``/v1``, ``/v1beta1``): a job's name starts after it."""
    return "/" + urlsplit(parent).path.strip("/").split("/", 1)[0]


def _info(job: dict[str, Any]) -> BatchInfo:
    state = job.get("state")
    stats = job.get("completionStats") or {}
    names = {"successfulCount": "completed", "failedCount": "failed", "incompleteCount": "incomplete"}
    error = job.get("error")
    return BatchInfo(
        str(job["name"]),
        state,
        state in _FINAL,
        {name: int(stats[key]) for key, name in names.items() if key in stats},
        [f"{error.get('code')}: {error.get('message')}"] if error and error.get("message") else [],
        (job.get("outputInfo") or {}).get("gcsOutputDirectory"),
    )
