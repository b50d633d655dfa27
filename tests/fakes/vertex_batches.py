"""Fake of Vertex AI's batch prediction jobs for Gemini, beside the OpenAI-compatible chat endpoint.

Written from the ``projects.locations.batchPredictionJobs`` REST reference and the "batch prediction from
Cloud Storage" guide. Input and output live in a real Cloud Storage server (``gcp-storage-emulator`` on
127.0.0.1, see tests/servers.py), read and written through its JSON API:

* ``POST /{v}/projects/{p}/locations/{l}/batchPredictionJobs`` ``{"displayName", "model":
  "publishers/google/models/{id}", "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris":
  ["gs://..."]}}, "outputConfig": {"predictionsFormat": "jsonl", "gcsDestination": {"outputUriPrefix":
  "gs://..."}}, "labels"}`` answers the BatchPredictionJob: ``name`` (``projects/{number}/locations/{l}/
  batchPredictionJobs/{id}``), ``state`` ``JOB_STATE_PENDING``, ``createTime``...
* ``GET {name}``: one state per retrieval, ``JOB_STATE_PENDING`` → ``JOB_STATE_RUNNING`` → ``JOB_STATE_SUCCEEDED``
  (or ``JOB_STATE_FAILED`` with ``error`` when the input is missing, not JSONL of ``{"request"}`` lines, or
  has more than ``max_requests`` lines; ``JOB_STATE_EXPIRED`` when a row was not reached in time), with
  ``completionStats`` and ``outputInfo.gcsOutputDirectory`` (``{prefix}/prediction-model-{time}``) where
  ``predictions.jsonl`` holds ``{"request", "response", "status": "", "processed_time"}`` per answered row,
  ``{"request", "status": "<error>", "processed_time"}`` per failed row, in any order (reversed here).
  A job stopped early (expired, cancelled) exports what it finished.
* ``POST {name}:cancel`` (``{}``; the job goes ``JOB_STATE_CANCELLING`` then ``JOB_STATE_CANCELLED``);
  ``GET .../batchPredictionJobs?pageSize=&pageToken=&filter=display_name="..."`` (``batchPredictionJobs``,
  ``nextPageToken``; newest first).
* Each request's ``labels`` must be Google labels (keys ``[a-z][a-z0-9_-]{0,62}``, values ``[a-z0-9_-]{0,63}``).
* Auth and errors as the chat fake (:class:`FakeVertex`): Bearer tokens, ``{"error": {"code", "message", "status"}}``.

Limits: ``max_requests`` lines (200,000) and ``max_file_bytes`` (1 GB) per input file fail the job.
Scripting: ``fail_rows`` / ``expire_rows`` hold row label values: a failed row gets a 500 status line (worth
retrying), an expired one is never reached so the job ends ``JOB_STATE_EXPIRED``; ``lose_create_replies``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

from aiohttp import web

from ._server import RECORDED, Handler, RequestInvalid
from .gemini import FakeGemini
from .stages import Holds
from .vertex import FakeVertex

_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
_DONE = ("JOB_STATE_SUCCEEDED", "JOB_STATE_PARTIALLY_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED",
         "JOB_STATE_EXPIRED")  # fmt: skip


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


class FakeVertexBatches(FakeVertex, Holds):
    def __init__(self, storage: str, **kwargs: Any) -> None:
        FakeVertex.__init__(self, **kwargs)
        Holds.__init__(self)
        self.storage = storage  # the Cloud Storage server's base URL
        self.gemini = FakeGemini()  # answers GenerateContentRequests (never started)
        self.fail_rows: set[str] = set()
        self.expire_rows: set[str] = set()
        self.lose_create_replies = 0
        self.max_requests, self.max_file_bytes = 200_000, 2**30
        self.jobs: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1000)

    def routes(self) -> list[tuple[str, str, Handler]]:
        jobs = "/{version}/projects/{project}/locations/{location}/batchPredictionJobs"
        return [*super().routes(), ("POST", jobs, self._create), ("GET", jobs, self._list),
                ("GET", jobs + "/{job}", self._get), ("POST", jobs + "/{job_action}", self._cancel)]  # fmt: skip

    async def _handle(self, request: web.Request) -> web.StreamResponse:  # the chat endpoint, online
        await self.wait_if_held("POST", request.path)
        return await super()._handle(request)

    def _denied(self, request: web.Request) -> web.Response | None:
        info = request.match_info
        auth = request.headers.get("Authorization", "")
        token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""
        if token not in self.valid_tokens:
            return self._error(401, "Request had invalid authentication credentials.")
        if info["version"] not in ("v1", "v1beta1"):
            return self._error(404, f"API version {info['version']} not found.")
        if info["project"] != self.project:
            return self._error(403, f"Permission denied on resource project {info['project']}.")
        if info["location"] != self.location:
            return self._error(400, f"Location {info['location']} is not supported.")
        return None

    # -------------------------------------------------------------- control plane
    async def _create(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        await self.wait_if_held("POST", request.path)
        body = request[RECORDED].json
        try:
            job = self._validate(body)
        except RequestInvalid as exc:
            return self._error(400, str(exc))
        job_id = str(next(self._ids))
        name = f"projects/{self.project}/locations/{self.location}/batchPredictionJobs/{job_id}"
        now = _now()
        job.update(name=name, state="JOB_STATE_PENDING", createTime=now, updateTime=now)
        self.jobs[job_id] = job
        await self.wait_if_held("POST", request.path, after=True)  # created; the reply may never arrive
        if self.lose_create_replies > 0:
            self.lose_create_replies -= 1
            return self._error(503, "The service is currently unavailable.")
        return web.json_response(job)

    def _validate(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not body.get("displayName"):
            raise RequestInvalid("displayName is required.")
        if not str(body.get("model", "")).startswith("publishers/google/models/"):
            raise RequestInvalid(f"model: expected publishers/google/models/<id>, got {body.get('model')!r}")
        source = body.get("inputConfig") or {}
        uris = (source.get("gcsSource") or {}).get("uris") or []
        if source.get("instancesFormat") != "jsonl" or len(uris) != 1 or not str(uris[0]).startswith("gs://"):
            raise RequestInvalid("inputConfig: instancesFormat jsonl with one gcsSource.uris gs:// URI is required.")
        sink = body.get("outputConfig") or {}
        prefix = (sink.get("gcsDestination") or {}).get("outputUriPrefix", "")
        if sink.get("predictionsFormat") != "jsonl" or not str(prefix).startswith("gs://"):
            raise RequestInvalid("outputConfig: predictionsFormat jsonl with gcsDestination.outputUriPrefix gs://.")
        for key, value in (body.get("labels") or {}).items():
            if not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(str(value)):
                raise RequestInvalid(f"labels: invalid label {key}={value}")
        known = {"displayName", "model", "inputConfig", "outputConfig", "labels"}
        if set(body) - known:
            raise RequestInvalid(f"Unknown name {sorted(set(body) - known)[0]!r}: Cannot find field.")
        return {k: body[k] for k in known if k in body}

    async def _get(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        await self.wait_if_held("GET", request.path)
        job = self.jobs.get(request.match_info["job"])
        if job is None:
            return self._error(404, f"BatchPredictionJob {request.match_info['job']} not found.")
        self._step(job)
        return web.json_response(job)

    async def _cancel(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        job_id, _, action = request.match_info["job_action"].partition(":")
        job = self.jobs.get(job_id)
        if action != "cancel" or job is None:
            return self._error(404, f"BatchPredictionJob {job_id} not found.")
        if job["state"] in _DONE:
            return self._error(400, f"BatchPredictionJob {job_id} is in state {job['state']}; it cannot be cancelled.")
        job.update(state="JOB_STATE_CANCELLING", updateTime=_now())
        return web.json_response({})

    async def _list(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        jobs = list(reversed(self.jobs.values()))
        wanted = re.fullmatch(r'display_name="([^"]*)"', request.query.get("filter", ""))
        if request.query.get("filter") and wanted is None:
            return self._error(400, f"Unsupported filter {request.query['filter']!r}.")
        if wanted:
            jobs = [j for j in jobs if j["displayName"] == wanted.group(1)]
        size = int(request.query.get("pageSize", "100"))
        start = int(request.query.get("pageToken") or 0)
        page: dict[str, Any] = {"batchPredictionJobs": jobs[start : start + size]}
        if start + size < len(jobs):
            page["nextPageToken"] = str(start + size)
        return web.json_response(page)

    # -------------------------------------------------------------- processing
    def finish_all(self) -> None:
        for job in self.jobs.values():
            for _ in range(3):
                self._step(job)

    def _step(self, job: dict[str, Any]) -> None:
        job["updateTime"] = _now()
        if job["state"] == "JOB_STATE_PENDING":
            job["state"] = "JOB_STATE_RUNNING"
        elif job["state"] == "JOB_STATE_RUNNING":
            self._run(job)
        elif job["state"] == "JOB_STATE_CANCELLING":
            job["state"] = "JOB_STATE_CANCELLED"
            job["completionStats"] = {"successfulCount": "0", "failedCount": "0", "incompleteCount": "0"}

    def _run(self, job: dict[str, Any]) -> None:
        try:
            lines = self._lines(job["inputConfig"]["gcsSource"]["uris"][0])
        except RequestInvalid as exc:
            job.update(state="JOB_STATE_FAILED", error={"code": 3, "message": str(exc)})
            return
        model = job["model"].rsplit("/", 1)[-1]
        out: list[dict[str, Any]] = []
        expired = False
        for line in lines:
            request = line["request"]
            row = str((request.get("labels") or {}).get("infermux_row"))
            if row in self.expire_rows:
                expired = True
                continue
            record: dict[str, Any] = {"request": request, "processed_time": _now()}
            try:
                if row in self.fail_rows:
                    raise RequestInvalid("Internal error encountered.", 500)
                record.update(response=self.gemini.answer(model, {k: v for k, v in request.items() if k != "labels"}),
                              status="")  # fmt: skip
            except (RequestInvalid, ValueError) as exc:
                code = getattr(exc, "status", 400)
                word = "INTERNAL" if code >= 500 else "INVALID_ARGUMENT"
                record["status"] = json.dumps({"error": {"code": code, "message": str(exc), "status": word}})
            out.append(record)
        out.reverse()  # any order
        directory = f"{job['outputConfig']['gcsDestination']['outputUriPrefix'].rstrip('/')}/prediction-model-{_now()}"
        self._put(directory + "/predictions.jsonl", "".join(json.dumps(o) + "\n" for o in out).encode())
        ok = sum(1 for o in out if not o["status"])
        job["completionStats"] = {"successfulCount": str(ok), "failedCount": str(len(out) - ok),
                                  "incompleteCount": str(len(lines) - len(out))}  # fmt: skip
        job["outputInfo"] = {"gcsOutputDirectory": directory}
        job["state"] = "JOB_STATE_EXPIRED" if expired else "JOB_STATE_SUCCEEDED"

    def _lines(self, uri: str) -> list[dict[str, Any]]:
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        try:
            with urllib.request.urlopen(
                f"{self.storage}/storage/v1/b/{bucket}/o/{quote(name, safe='')}?alt=media"
            ) as r:
                data = r.read()
        except urllib.error.HTTPError as exc:
            raise RequestInvalid(f"Failed to read {uri}: {exc.code}.") from None
        if len(data) > self.max_file_bytes:
            raise RequestInvalid(f"{uri} is {len(data)} bytes; an input file may have at most {self.max_file_bytes}.")
        try:
            lines = [json.loads(raw) for raw in data.splitlines() if raw.strip()]
        except ValueError:
            raise RequestInvalid(f"{uri} is not JSON Lines.") from None
        if not all(isinstance(line, dict) and isinstance(line.get("request"), dict) for line in lines):
            raise RequestInvalid(f"Each line of {uri} needs a request object.")
        if len(lines) > self.max_requests:
            raise RequestInvalid(f"The job has {len(lines)} requests; at most {self.max_requests} are allowed.")
        return lines

    def _put(self, uri: str, data: bytes) -> None:
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        url = f"{self.storage}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={quote(name, safe='')}"
        put = urllib.request.Request(url, data, {"Content-Type": "application/octet-stream"}, method="POST")
        with urllib.request.urlopen(put):
            pass
