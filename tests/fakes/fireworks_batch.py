"""Fake of Fireworks AI's batch inference: datasets and batch inference jobs, beside chat completions.

Written from Fireworks' batch inference guide and its Gateway REST reference:

* ``POST /inference/v1/chat/completions``: the OpenAI-compatible online API (rows rerun outside a batch).
* ``POST /v1/accounts/{account}/datasets`` ``{"datasetId", "dataset": {"displayName", "exampleCount",
  "userUploaded": {}, ...}}`` makes a dataset (``name`` ``accounts/{account}/datasets/{id}``, ``state``
  ``UPLOADING`` until its file is uploaded, then ``READY``); an existing id is 409 ALREADY_EXISTS.
  ``GET .../datasets/{id}`` reads one. ``POST .../datasets/{id}:upload`` (multipart ``file``, at most
  150 MB) uploads its JSONL. ``GET .../datasets/{id}:getDownloadEndpoint`` answers
  ``{"filenameToSignedUrls": {name: url}}``; a signed URL is read without the API key (one that carries
  an ``Authorization`` header is refused, as a storage host would).
* Input lines ``{"custom_id", "body"}``: ``custom_id`` unique; ``body`` a chat-completions body without
  ``model`` needed (the job names it). The input file must be under the size limit.
* ``POST .../batchInferenceJobs?batchInferenceJobId=ID`` ``{"displayName", "model", "inputDatasetId",
  "outputDatasetId", "inferenceParameters"?, "precision"?}`` creates a job: ``name``, ``state``
  (``JOB_STATE_VALIDATING``, ``JOB_STATE_PENDING``, ``JOB_STATE_RUNNING``, then ``JOB_STATE_COMPLETED``,
  ``JOB_STATE_FAILED``, ``JOB_STATE_EXPIRED`` after 24 hours with what it answered kept, or
  ``JOB_STATE_CANCELLED``), ``status {"code", "message"}``, ``jobProgress`` (``totalInputRequests``,
  ``successfullyProcessedRequests``, ``failedRequests``, ...), ``createTime``, ``updateTime``. An existing
  id is 409. ``GET .../batchInferenceJobs/{id}`` polls; ``GET .../batchInferenceJobs?pageSize=&pageToken=
  &orderBy=`` lists (``{"batchInferenceJobs", "nextPageToken", "totalSize"}``). There is no cancel call.
* The output dataset holds a results file (a line ``{"custom_id", "response": <chat completion>}`` per
  answered request, any order: this fake reverses them) and an error file (``{"custom_id", "error":
  {"code", "message"}}`` per failed one).
* Control-plane errors: ``{"code": <grpc code>, "message", "details": []}`` with the HTTP status.

Processing is scripted: a job advances one state per retrieval; ``fail_custom_ids`` fail with
``fail_status``; ``expire_custom_ids`` are not reached before the deadline (the job ends EXPIRED).
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ._openai_chat import chat_completion, validate_chat_body
from ._server import RECORDED, Handler, RequestInvalid
from .openai_batch import FakeOpenAIBatch, _parse_multipart
from .stages import Holds

_GRPC = {400: 3, 401: 16, 404: 5, 409: 6, 500: 13}
_JOB_FIELDS = {"displayName", "model", "inputDatasetId", "outputDatasetId", "inferenceParameters", "precision"}


def _iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass
class _Dataset:
    obj: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)


class FakeFireworksBatch(FakeOpenAIBatch, Holds):
    def __init__(self, *args: Any, account: str = "acct-test", expire_custom_ids: set[str] | None = None,
                 **kwargs: Any) -> None:  # fmt: skip
        kwargs.setdefault("max_bytes", 150 * 2**20)
        FakeOpenAIBatch.__init__(self, *args, **kwargs)
        Holds.__init__(self)
        self.account = account
        self.expire_custom_ids = set(expire_custom_ids or ())
        self.datasets: dict[str, _Dataset] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self._lines: dict[str, list[dict[str, Any]]] = {}
        self._signed: dict[str, bytes] = {}

    def routes(self) -> list[tuple[str, str, Handler]]:
        acct = "/v1/accounts/{account}"
        return [
            ("POST", "/inference/v1/chat/completions", self._held_chat),
            ("POST", acct + "/datasets", self._create_dataset),
            ("GET", acct + "/datasets/{dataset}", self._get_dataset),
            ("POST", acct + "/datasets/{dataset}", self._upload_dataset),  # {id}:upload
            ("POST", acct + "/batchInferenceJobs", self._create_job),
            ("GET", acct + "/batchInferenceJobs", self._list_jobs),
            ("GET", acct + "/batchInferenceJobs/{job}", self._get_job),
            ("GET", "/signed/{token}", self._signed_get),
        ]

    def _gerror(self, status: int, message: str) -> web.Response:
        return web.json_response({"code": _GRPC.get(status, 2), "message": message, "details": []}, status=status)

    def _check(self, request: web.Request) -> web.Response | None:
        if (denied := self._auth(request)) is not None:
            return denied
        if request.match_info.get("account") != self.account:
            return self._gerror(403, f"permission denied on account {request.match_info.get('account')!r}")
        return None

    async def _held_chat(self, request: web.Request) -> web.Response:
        await self.wait_if_held("POST", request.path)
        return await self._chat(request)

    # ---------------------------------------------------------------- datasets
    async def _create_dataset(self, request: web.Request) -> web.Response:
        if (denied := self._check(request)) is not None:
            return denied
        body = request[RECORDED].json
        if not isinstance(body, dict) or not isinstance(body.get("dataset"), dict) or not body.get("datasetId"):
            return self._gerror(400, "datasetId and dataset are required")
        dataset_id = str(body["datasetId"])
        if dataset_id in self.datasets:
            return self._gerror(409, f"dataset {dataset_id} already exists")
        obj = {**body["dataset"], "name": f"accounts/{self.account}/datasets/{dataset_id}", "state": "UPLOADING",
               "createTime": _iso(), "status": {"code": "OK", "message": ""}}  # fmt: skip
        self.datasets[dataset_id] = _Dataset(obj)
        return web.json_response(obj)

    async def _get_dataset(self, request: web.Request) -> web.Response:
        if (denied := self._check(request)) is not None:
            return denied
        dataset_id, _, verb = request.match_info["dataset"].partition(":")
        dataset = self.datasets.get(dataset_id)
        if dataset is None:
            return self._gerror(404, f"dataset {dataset_id} not found")
        if verb == "getDownloadEndpoint":
            await self.wait_if_held("GET", request.path)
            urls = {}
            for name, data in dataset.files.items():
                token = uuid.uuid4().hex
                self._signed[token] = data
                urls[name] = f"{self.url}/signed/{token}"
            return web.json_response({"filenameToSignedUrls": urls})
        if verb:
            return self._gerror(404, f"unknown method {verb}")
        return web.json_response(dataset.obj)

    async def _upload_dataset(self, request: web.Request) -> web.Response:
        if (denied := self._check(request)) is not None:
            return denied
        dataset_id, _, verb = request.match_info["dataset"].partition(":")
        if verb != "upload":
            return self._gerror(404, f"unknown method {verb!r}")
        await self.wait_if_held("POST", request.path)
        dataset = self.datasets.get(dataset_id)
        if dataset is None:
            return self._gerror(404, f"dataset {dataset_id} not found")
        if not request.content_type.startswith("multipart/"):
            return self._gerror(400, "expected a multipart/form-data body with a file")
        _fields, files = _parse_multipart(request.headers["Content-Type"], request[RECORDED].body)
        if "file" not in files:
            return self._gerror(400, "file is required")
        filename, data = files["file"]
        if len(data) > self.max_bytes:
            return self._gerror(400, f"file is {len(data)} bytes, over the {self.max_bytes}-byte upload limit")
        dataset.files = {filename: data}
        dataset.obj["state"] = "READY"
        return web.json_response({"id": dataset_id, "object": "file", "bytes": len(data),
                                  "created_at": int(time.time()), "filename": filename, "purpose": "dataset"})  # fmt: skip

    async def _signed_get(self, request: web.Request) -> web.Response:
        if "Authorization" in request.headers:
            return web.Response(status=400, text="signed URLs take no Authorization header")
        data = self._signed.get(request.match_info["token"])
        if data is None:
            return web.Response(status=403, text="signature expired")
        return web.Response(body=data, content_type="application/octet-stream")

    # -------------------------------------------------------------------- jobs
    async def _create_job(self, request: web.Request) -> web.Response:
        if (denied := self._check(request)) is not None:
            return denied
        body = request[RECORDED].json
        job_id = request.query.get("batchInferenceJobId") or uuid.uuid4().hex[:12]
        if not isinstance(body, dict) or set(body) - _JOB_FIELDS:
            return self._gerror(400, f"unknown fields {sorted(set(body or {}) - _JOB_FIELDS)}")
        if not body.get("model") or not body.get("inputDatasetId"):
            return self._gerror(400, "model and inputDatasetId are required")
        if job_id in self.jobs:
            return self._gerror(409, f"batch inference job {job_id} already exists")
        prefix = f"accounts/{self.account}/datasets/"
        input_id = str(body["inputDatasetId"]).removeprefix(prefix)
        dataset = self.datasets.get(input_id)
        if dataset is None or dataset.obj["state"] != "READY":
            return self._gerror(400, f"input dataset {body['inputDatasetId']} is not ready")
        output_id = str(body.get("outputDatasetId") or prefix + job_id + "-output").removeprefix(prefix)
        job = {"name": f"accounts/{self.account}/batchInferenceJobs/{job_id}", "displayName": body.get("displayName"),
               "createTime": _iso(), "updateTime": _iso(), "createdBy": "user@example.com",
               "state": "JOB_STATE_VALIDATING", "status": {"code": "OK", "message": ""}, "model": body["model"],
               "inputDatasetId": prefix + input_id, "outputDatasetId": prefix + output_id,
               "inferenceParameters": body.get("inferenceParameters") or {}, "precision": "PRECISION_UNSPECIFIED",
               "jobProgress": {"percent": 0, "totalInputRequests": 0, "totalProcessedRequests": 0,
                               "successfullyProcessedRequests": 0, "failedRequests": 0}}  # fmt: skip
        self.jobs[job_id] = job
        await self.wait_if_held("POST", request.path, after=True)  # created; the reply may never arrive
        if self.lose_create_replies > 0:
            self.lose_create_replies -= 1
            return self._gerror(500, "internal error")
        return web.json_response(job)

    async def _get_job(self, request: web.Request) -> web.Response:
        if (denied := self._check(request)) is not None:
            return denied
        await self.wait_if_held("GET", request.path)
        job = self.jobs.get(request.match_info["job"])
        if job is None:
            return self._gerror(404, f"batch inference job {request.match_info['job']} not found")
        if self.advance_on_poll:
            self._step(job)
        return web.json_response(job)

    async def _list_jobs(self, request: web.Request) -> web.Response:
        if (denied := self._check(request)) is not None:
            return denied
        jobs = sorted(self.jobs.values(), key=lambda j: (j["createTime"], j["name"]),
                      reverse=request.query.get("orderBy", "").endswith(" desc"))  # fmt: skip
        size = min(200, int(request.query.get("pageSize", "50")))
        start = int(request.query.get("pageToken") or 0)
        page = jobs[start : start + size]
        token = str(start + size) if start + size < len(jobs) else ""
        return web.json_response({"batchInferenceJobs": page, "nextPageToken": token, "totalSize": len(jobs)})

    # -------------------------------------------------------------- processing
    def finish_all(self) -> None:
        for job in self.jobs.values():
            for _ in range(4):
                self._step(job)

    def _step(self, job: dict[str, Any]) -> None:
        job["updateTime"] = _iso()
        state = job["state"]
        if state == "JOB_STATE_VALIDATING":
            problem = self._validate(job)
            job.update(state="JOB_STATE_FAILED", status={"code": "INVALID_ARGUMENT", "message": problem}) if problem \
                else job.update(state="JOB_STATE_PENDING")  # fmt: skip
        elif state == "JOB_STATE_PENDING":
            job["state"] = "JOB_STATE_RUNNING"
        elif state == "JOB_STATE_RUNNING":
            expired = self._run(job)
            job["state"] = "JOB_STATE_EXPIRED" if expired else "JOB_STATE_COMPLETED"
            if expired:
                job["status"] = {"code": "DEADLINE_EXCEEDED", "message": "the job exceeded the 24-hour limit"}

    def _validate(self, job: dict[str, Any]) -> str | None:
        dataset = self.datasets[job["inputDatasetId"].rsplit("/", 1)[-1]]
        lines = [json.loads(raw) for data in dataset.files.values() for raw in data.splitlines() if raw.strip()]
        seen: set[str] = set()
        for number, line in enumerate(lines, 1):
            if not isinstance(line, dict) or set(line) != {"custom_id", "body"} or not isinstance(line["body"], dict):
                return f"line {number}: each line needs custom_id and body"
            if not isinstance(line["custom_id"], str) or line["custom_id"] in seen:
                return f"line {number}: custom_id must be a unique string"
            seen.add(line["custom_id"])
        self._lines[job["name"]] = lines
        job["jobProgress"]["totalInputRequests"] = len(lines)
        return None

    def _run(self, job: dict[str, Any]) -> bool:
        results: list[str] = []
        errors: list[str] = []
        expired = False
        for line in self._lines[job["name"]]:
            cid = line["custom_id"]
            if cid in self.expire_custom_ids:
                expired = True
                continue
            body = {**line["body"], "model": job["model"]}
            try:
                if cid in self.fail_custom_ids:
                    raise RequestInvalid("This request was rejected by the fake (fail_custom_ids).", self.fail_status)
                reply = chat_completion(body, validate_chat_body(body), self.responder, self._new_id("chatcmpl-"))
                results.append(json.dumps({"custom_id": cid, "response": reply}))
            except RequestInvalid as exc:
                errors.append(json.dumps({"custom_id": cid, "error": {"code": exc.status, "message": str(exc)}}))
        output_id = job["outputDatasetId"].rsplit("/", 1)[-1]
        files = {"BIJ_results.jsonl": results, "BIJ_errors.jsonl": errors}
        output = _Dataset({"name": job["outputDatasetId"], "state": "READY", "createTime": _iso()},
                          {name: ("\n".join(reversed(lines)) + "\n").encode() for name, lines in files.items() if lines})  # fmt: skip
        self.datasets[output_id] = output
        progress = job["jobProgress"]
        progress.update(percent=100, totalProcessedRequests=len(results) + len(errors),
                        successfullyProcessedRequests=len(results), failedRequests=len(errors))  # fmt: skip
        return expired
