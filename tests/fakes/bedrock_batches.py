"""Fake of Bedrock's batch inference control plane (model invocation jobs) and of Converse, on 127.0.0.1.

Written from the Bedrock API reference (``CreateModelInvocationJob``, ``GetModelInvocationJob``,
``StopModelInvocationJob``, ``ListModelInvocationJobs``, ``Converse``) and the user guide's batch inference
pages. Records live in a real S3 server (moto's, see tests/servers.py), read and written with boto3:

* REST-JSON, SigV4-signed for service ``bedrock`` (the credential's access key is checked; errors are
  ``x-amzn-ErrorType`` + ``{"message"}``: ``ValidationException`` 400, ``ResourceNotFoundException`` 404,
  ``AccessDeniedException`` 403, ``UnrecognizedClientException`` 403);
* ``POST /model-invocation-job`` ``{jobName, roleArn, clientRequestToken?, modelId, modelInvocationType?,
  inputDataConfig.s3InputDataConfig{s3Uri, s3InputFormat?}, outputDataConfig.s3OutputDataConfig{s3Uri},
  timeoutDurationInHours? (24..168), tags?}`` answers ``{jobArn}``; a repeated ``clientRequestToken`` answers
  the job it made;
* ``GET /model-invocation-job/{jobIdentifier}`` (the ARN or the id): one status per retrieval, ``Submitted``
  → ``Validating`` (the input is read: JSONL records ``{"recordId", "modelInput"}``; fewer than
  ``min_records``, more than ``max_records`` or a file over ``max_file_bytes`` fail the job with a
  ``message``) → ``Scheduled`` → ``InProgress`` → ``Completed``, ``PartiallyCompleted`` (some records
  errored) or ``Expired`` (records not reached before the timeout; the finished ones are written);
* ``POST /model-invocation-job/{id}/stop``: ``Stopping`` then ``Stopped`` (what finished is kept);
* ``GET /model-invocation-jobs?maxResults&nextToken&nameContains&sortOrder`` → ``invocationJobSummaries``;
* output: ``{outputUri}/{job id}/{input file}.out`` lines ``{"recordId", "modelInput", "modelOutput"}`` or
  ``{..., "error": {"errorCode", "errorMessage"}}`` (any order: reversed here) and ``manifest.json.out``
  (``totalRecordCount``, ``processedRecordCount``, ``successRecordCount``, ``errorRecordCount``);
* ``POST /model/{modelId}/converse``: an answer to the last user text (online, for rows a job did not answer).

Scripting: ``fail_records`` / ``expire_records`` (record ids) and ``hold`` (tests/fakes/stages.py).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from ._server import RECORDED, FakeServer, Handler
from .stages import Holds

ACCOUNT = "123456789012"
_NAME = re.compile(r"[a-zA-Z0-9]{1,63}(-*[a-zA-Z0-9\+\-\.]){0,63}")
_TOKEN = re.compile(r"[a-zA-Z0-9]{1,256}(-*[a-zA-Z0-9]){0,256}")
_ROLE = re.compile(r"arn:aws(-[^:]+)?:iam::([0-9]{12})?:role/.+")
_ENDED = ("Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


class Invalid(Exception):
    def __init__(self, message: str, code: str = "ValidationException", status: int = 400) -> None:
        super().__init__(message)
        self.code, self.status = code, status


class FakeBedrockBatches(FakeServer, Holds):
    def __init__(self, s3: Any, access_key: str, region: str = "us-east-1") -> None:
        FakeServer.__init__(self)
        Holds.__init__(self)
        self.s3 = s3  # a boto3 S3 client of the object store the jobs read and write
        self.access_key, self.region = access_key, region
        self.min_records, self.max_records, self.max_file_bytes = 100, 50_000, 2**30
        self.fail_records: set[str] = set()
        self.expire_records: set[str] = set()
        self.jobs: dict[str, dict[str, Any]] = {}
        self._records: dict[str, tuple[str, list[dict[str, Any]]]] = {}
        self._ids = itertools.count(1)

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", "/model-invocation-job", self._create),
            ("GET", "/model-invocation-jobs", self._list),
            ("POST", r"/model-invocation-job/{job:.+}/stop", self._stop),
            ("GET", r"/model-invocation-job/{job:.+}", self._get),
            ("POST", "/model/{model}/converse", self._converse),
        ]

    def _error(self, exc: Invalid) -> web.Response:
        return web.json_response({"message": str(exc)}, status=exc.status, headers={"x-amzn-ErrorType": exc.code})

    def _check_signature(self, request: web.Request) -> None:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("AWS4-HMAC-SHA256 Credential="):
            raise Invalid("Missing Authentication Token", "AccessDeniedException", 403)
        scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/")
        if scope[0] != self.access_key:
            raise Invalid("The security token included in the request is invalid.", "UnrecognizedClientException", 403)
        if scope[2:] != [self.region, "bedrock", "aws4_request"]:
            raise Invalid(f"Credential should be scoped to a valid region and service bedrock, not {scope[2:]}.")

    def _job(self, identifier: str) -> dict[str, Any]:
        job = self.jobs.get(unquote(identifier).rsplit("/", 1)[-1])
        if job is None:
            raise Invalid(f"Could not find job {identifier}", "ResourceNotFoundException", 404)
        return job

    # -------------------------------------------------------------- control plane
    async def _create(self, request: web.Request) -> web.Response:
        try:
            self._check_signature(request)
            await self.wait_if_held("POST", request.path)
            body = request[RECORDED].json or {}
            token = body.get("clientRequestToken")
            for job in self.jobs.values():
                if token and job.get("clientRequestToken") == token:
                    return web.json_response({"jobArn": job["jobArn"]})  # idempotent
            job = self._validate(body)
        except Invalid as exc:
            return self._error(exc)
        job_id = f"job{next(self._ids):09d}"
        arn = f"arn:aws:bedrock:{self.region}:{ACCOUNT}:model-invocation-job/{job_id}"
        now = _now()
        job.update(jobArn=arn, status="Submitted", submitTime=now, lastModifiedTime=now)
        self.jobs[job_id] = job
        await self.wait_if_held("POST", request.path, after=True)  # created; the reply may never arrive
        return web.json_response({"jobArn": arn})

    def _validate(self, body: dict[str, Any]) -> dict[str, Any]:
        for field in ("jobName", "roleArn", "modelId", "inputDataConfig", "outputDataConfig"):
            if field not in body:
                raise Invalid(f"1 validation error detected: Value null at '{field}' failed to satisfy constraint")
        if not _NAME.fullmatch(str(body["jobName"])) or len(body["jobName"]) > 63:
            raise Invalid(f"jobName {body['jobName']!r} does not satisfy the pattern")
        if not _ROLE.fullmatch(str(body["roleArn"])):
            raise Invalid(f"roleArn {body['roleArn']!r} is not an IAM role ARN")
        if "clientRequestToken" in body and not _TOKEN.fullmatch(str(body["clientRequestToken"])):
            raise Invalid("clientRequestToken does not satisfy the pattern")
        if body.get("modelInvocationType", "InvokeModel") not in ("InvokeModel", "Converse"):
            raise Invalid("modelInvocationType must be InvokeModel or Converse")
        if not 24 <= int(body.get("timeoutDurationInHours", 24)) <= 168:
            raise Invalid("timeoutDurationInHours must be between 24 and 168")
        source = (body["inputDataConfig"] or {}).get("s3InputDataConfig") or {}
        sink = (body["outputDataConfig"] or {}).get("s3OutputDataConfig") or {}
        if not str(source.get("s3Uri", "")).startswith("s3://") or not str(sink.get("s3Uri", "")).startswith("s3://"):
            raise Invalid("inputDataConfig and outputDataConfig need s3Uri locations")
        if source.get("s3InputFormat", "JSONL") != "JSONL":
            raise Invalid("s3InputFormat must be JSONL")
        return dict(body)

    async def _get(self, request: web.Request) -> web.Response:
        try:
            self._check_signature(request)
            await self.wait_if_held("GET", request.path)
            job = self._job(request.match_info["job"])
        except Invalid as exc:
            return self._error(exc)
        self._step(job)
        return web.json_response({k: v for k, v in job.items() if k != "tags"})

    async def _stop(self, request: web.Request) -> web.Response:
        try:
            self._check_signature(request)
            job = self._job(request.match_info["job"])
            if job["status"] in _ENDED:
                raise Invalid(f"The job is {job['status']} and cannot be stopped.")
        except Invalid as exc:
            return self._error(exc)
        job.update(status="Stopping", lastModifiedTime=_now())
        return web.json_response({})

    async def _list(self, request: web.Request) -> web.Response:
        try:
            self._check_signature(request)
        except Invalid as exc:
            return self._error(exc)
        jobs = list(self.jobs.values())
        if request.query.get("sortOrder", "Descending") == "Descending":
            jobs.reverse()
        name = request.query.get("nameContains")
        if name:
            jobs = [j for j in jobs if name in j["jobName"]]
        size = int(request.query.get("maxResults", "1000"))
        start = int(request.query.get("nextToken") or 0)
        keys = ("jobArn", "jobName", "modelId", "clientRequestToken", "roleArn", "status", "message", "submitTime",
                "lastModifiedTime", "inputDataConfig", "outputDataConfig", "timeoutDurationInHours")  # fmt: skip
        page: dict[str, Any] = {
            "invocationJobSummaries": [{k: j[k] for k in keys if k in j} for j in jobs[start : start + size]]
        }
        if start + size < len(jobs):
            page["nextToken"] = str(start + size)
        return web.json_response(page)

    # -------------------------------------------------------------- runtime
    async def _converse(self, request: web.Request) -> web.Response:
        try:
            self._check_signature(request)
            await self.wait_if_held("POST", request.path)
            return web.json_response(self.converse(request[RECORDED].json or {}))
        except Invalid as exc:
            return self._error(exc)

    def converse(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or messages[-1].get("role") != "user":
            raise Invalid("A conversation must start with a user message and end with one.")
        if "maxTokens" in (body.get("inferenceConfig") or {}) and int(body["inferenceConfig"]["maxTokens"]) < 1:
            raise Invalid("maxTokens must be at least 1")
        last = " ".join(block.get("text", "") for block in messages[-1].get("content") or [])
        text = f"answer to {last}"
        words = sum(len(b.get("text", "").split()) for m in messages for b in m.get("content") or [])
        usage = {"inputTokens": words, "outputTokens": len(text.split()), "totalTokens": words + len(text.split())}
        return {"output": {"message": {"role": "assistant", "content": [{"text": text}]}}, "stopReason": "end_turn",
                "usage": usage, "metrics": {"latencyMs": 1}}  # fmt: skip

    # -------------------------------------------------------------- processing
    def finish_all(self) -> None:
        for job in self.jobs.values():
            for _ in range(5):
                self._step(job)

    def _step(self, job: dict[str, Any]) -> None:
        job["lastModifiedTime"] = _now()
        status = job["status"]
        if status == "Submitted":
            job["status"] = "Validating"
        elif status == "Validating":
            try:
                self._read(job)
                job["status"] = "Scheduled"
            except Invalid as exc:
                job.update(status="Failed", message=str(exc), endTime=_now())
        elif status == "Scheduled":
            job["status"] = "InProgress"
        elif status == "InProgress":
            self._run(job)
        elif status == "Stopping":
            job.update(status="Stopped", endTime=_now())

    def _bucket_key(self, uri: str) -> tuple[str, str]:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        return bucket, key

    def _read(self, job: dict[str, Any]) -> None:
        bucket, key = self._bucket_key(job["inputDataConfig"]["s3InputDataConfig"]["s3Uri"])
        keys = [key] if key.endswith(".jsonl") else [
            str(o["Key"]) for o in self.s3.list_objects_v2(Bucket=bucket, Prefix=key).get("Contents") or []
            if str(o["Key"]).endswith(".jsonl")
        ]  # fmt: skip
        records: list[dict[str, Any]] = []
        for name in keys:
            try:
                data = self.s3.get_object(Bucket=bucket, Key=name)["Body"].read()
            except self.s3.exceptions.NoSuchKey:
                raise Invalid(f"Unable to read s3://{bucket}/{name}.") from None
            if len(data) > self.max_file_bytes:
                raise Invalid(f"s3://{bucket}/{name} is larger than {self.max_file_bytes} bytes.")
            for number, raw in enumerate(data.splitlines(), 1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except ValueError:
                    raise Invalid(f"s3://{bucket}/{name} line {number} is not JSON.") from None
                if not isinstance(record, dict) or not isinstance(record.get("modelInput"), dict):
                    raise Invalid(f"s3://{bucket}/{name} line {number} has no modelInput object.")
                records.append(record)
        if len(records) < self.min_records:
            raise Invalid(f"The job has {len(records)} records, fewer than the minimum of {self.min_records}.")
        if len(records) > self.max_records:
            raise Invalid(f"The job has {len(records)} records, more than the maximum of {self.max_records}.")
        self._records[job["jobArn"]] = (keys[0].rsplit("/", 1)[-1] if keys else "input.jsonl", records)

    def _run(self, job: dict[str, Any]) -> None:
        name, records = self._records[job["jobArn"]]
        out: list[dict[str, Any]] = []
        expired = False
        for number, record in enumerate(records):
            record_id = str(record.get("recordId") or f"{number:011d}")
            if record_id in self.expire_records:
                expired = True
                continue
            line: dict[str, Any] = {"recordId": record_id, "modelInput": record["modelInput"]}
            try:
                if record_id in self.fail_records:
                    raise Invalid("The model is temporarily unavailable.", "ServiceUnavailableException", 503)
                line["modelOutput"] = self.converse(record["modelInput"])
            except Invalid as exc:
                line["error"] = {"errorCode": exc.status, "errorMessage": str(exc)}
            out.append(line)
        out.reverse()  # any order
        bucket, prefix = self._bucket_key(job["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"])
        folder = f"{prefix.rstrip('/')}/{job['jobArn'].rsplit('/', 1)[-1]}/".lstrip("/")
        self.s3.put_object(Bucket=bucket, Key=folder + name + ".out",
                           Body="".join(json.dumps(o) + "\n" for o in out).encode())  # fmt: skip
        errors = sum(1 for o in out if "error" in o)
        manifest = {"totalRecordCount": len(records), "processedRecordCount": len(out),
                    "successRecordCount": len(out) - errors, "errorRecordCount": errors}  # fmt: skip
        self.s3.put_object(Bucket=bucket, Key=folder + "manifest.json.out", Body=json.dumps(manifest).encode())
        status = "Expired" if expired else "PartiallyCompleted" if errors else "Completed"
        job.update(status=status, endTime=_now())
        if expired:
            job["message"] = "The job did not finish before its timeout; the processed records were written."
