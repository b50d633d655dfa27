"""Bedrock batch inference (model invocation jobs) for BEDROCK: records in S3, results beside them.

Read from the Bedrock API reference (``CreateModelInvocationJob``, ``GetModelInvocationJob``,
``StopModelInvocationJob``, ``ListModelInvocationJobs``) and the user guide's batch inference pages:

* Each row is one record ``{"recordId", "modelInput"}``; with ``modelInvocationType: Converse`` the
  ``modelInput`` is the Converse request the engine would send online (without ``modelId``, which the job
  names; image bytes base64-encoded, as in Converse's JSON). :meth:`upload` writes a batch's records to
  ``<BEDROCK_BATCH_S3_URI>/<batch name>/input.jsonl``.
* :meth:`create`: ``CreateModelInvocationJob`` with ``jobName`` (the batch name), ``roleArn``
  (``BEDROCK_BATCH_ROLE_ARN``: the service role Bedrock reads and writes S3 as), ``modelId``, the input
  and output S3 locations, ``timeoutDurationInHours`` and a ``clientRequestToken`` made from the batch
  name, so a creation retried after a lost reply makes no second job; an interrupted one is found by
  ``ListModelInvocationJobs(nameContains=...)``.
* ``GetModelInvocationJob``: ``status`` ``Submitted``, ``Validating``, ``Scheduled``, ``InProgress``,
  ``Stopping``, then ``Completed``, ``PartiallyCompleted``, ``Failed``, ``Stopped`` or ``Expired`` (the
  job's timeout passed; what it finished is kept); ``message`` says why a job failed.
* Results: ``<output>/<job id>/input.jsonl.out``, one line per record, ``{"recordId", "modelInput",
  "modelOutput"}`` (the Converse response) or ``{"recordId", "modelInput", "error": {"errorCode",
  "errorMessage"}}``, in any order; ``manifest.json.out`` counts them. Rows without a line fail as expired,
  stopped or failed; ``infermux batch run`` answers them online.
* Quotas (per account, adjustable in Service Quotas): at least 100 records per job
  (``BEDROCK_BATCH_MIN_RECORDS`` when your quota differs: a smaller batch is not sent, its rows are
  answered online), at most 50,000 records per job and input file, 1 GB per input file.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
from typing import TYPE_CHECKING, Any

from infermux.engines.batch_client import BatchClient, BatchInfo, BatchInput, BatchLimits
from infermux.engines.remote.bedrock.engine import _remote_error, parse_converse_response
from infermux.errors import ConfigError, ErrorKind, RemoteError, RowError

if TYPE_CHECKING:
    from infermux.configs.generation_params import GenerationParams
    from infermux.engines.remote.bedrock.engine import BedrockInferenceEngine
    from infermux.types import Conversation

__all__ = ["MIN_RECORDS_ENV", "ROLE_ENV", "S3_ENV", "BedrockBatchClient"]

S3_ENV = "BEDROCK_BATCH_S3_URI"
ROLE_ENV = "BEDROCK_BATCH_ROLE_ARN"
MIN_RECORDS_ENV = "BEDROCK_BATCH_MIN_RECORDS"
MIN_RECORDS = 100
MAX_RECORDS = 50_000
MAX_BYTES = 2**30
TIMEOUT_HOURS = 24  # Bedrock's smallest timeout (24 to 168 hours)
_FINAL = {
    "Completed": ErrorKind.BATCH_FAILED,  # a record without a line in a finished job
    "PartiallyCompleted": ErrorKind.BATCH_FAILED,
    "Failed": ErrorKind.BATCH_FAILED,
    "Stopped": ErrorKind.BATCH_CANCELLED,
    "Expired": ErrorKind.BATCH_EXPIRED,
}
_RETRYABLE = frozenset({408, 424, 429, 500, 502, 503, 504})


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode()
    raise TypeError(f"cannot write {type(value).__name__} in a batch record")


class BedrockBatchClient(BatchClient):
    """Model invocation jobs against Bedrock, records in S3 (see the module docstring)."""

    can_cancel = True
    can_list = True
    endpoint = "/model-invocation-job"
    completion_window = f"{TIMEOUT_HOURS}h"

    def __init__(self, engine: BedrockInferenceEngine) -> None:
        engine.check_ready()
        self.engine = engine
        self.name = engine.name
        self.model = engine.model_params.model_name
        self.s3_uri = os.environ.get(S3_ENV, "").strip().rstrip("/")
        self.role = os.environ.get(ROLE_ENV, "").strip()
        minimum = os.environ.get(MIN_RECORDS_ENV, "").strip()
        if minimum and not minimum.isdigit():
            raise ConfigError(f"{MIN_RECORDS_ENV} must be a whole number (your account's quota), not {minimum!r}.")
        self.limits = BatchLimits(
            MAX_RECORDS, MAX_BYTES, separator=1, name="input file limit", min_requests=int(minimum or MIN_RECORDS)
        )
        self._clients: tuple[Any, Any] | None = None

    async def __aenter__(self) -> BedrockBatchClient:
        if not self.s3_uri.startswith("s3://") or len(self.s3_uri) <= len("s3://"):
            raise ConfigError(f"BEDROCK batches read and write S3: set {S3_ENV} to an s3://bucket/prefix.")
        if not self.role.startswith("arn:"):
            raise ConfigError(
                f"BEDROCK batch jobs run as a service role that may read and write {S3_ENV}: set {ROLE_ENV} to "
                "its ARN (arn:aws:iam::<account>:role/<name>)."
            )
        import boto3
        from botocore.config import Config

        config = Config(region_name=self.engine.region, retries={"total_max_attempts": 3, "mode": "standard"})
        session = boto3.session.Session()  # credentials as the environment says now (not boto3's cached default)
        self._clients = (session.client("bedrock", config=config), session.client("s3", config=config))
        return self

    async def __aexit__(self, *exc: object) -> None:
        clients, self._clients = self._clients, None
        for client in clients or ():
            client.close()

    async def _call(self, service: int, method: str, **kwargs: Any) -> Any:
        assert self._clients is not None, "use the client as `async with client:`"
        call = getattr(self._clients[service], method)
        try:
            return await asyncio.to_thread(call, **kwargs)
        except Exception as exc:  # botocore's errors, as the engine reads them
            raise _remote_error(exc) from None

    # ------------------------------------------------------------------ rows <-> records
    def custom_id(self, row_id: str) -> str:
        return "r" + hashlib.sha256(row_id.encode("utf-8", "surrogatepass")).hexdigest()[:40]  # alphanumeric

    def encode(self, custom_id: str, conversation: Conversation, generation: GenerationParams) -> bytes:
        if generation.n > 1:  # online, the engine sends n Converse calls; a job holds one record per row
            raise ValueError("BEDROCK batch jobs answer each row once: n > 1 needs the online job (infermux infer)")
        request = self.engine.converse_request(conversation, generation)
        request.pop("modelId", None)
        return json.dumps({"recordId": custom_id, "modelInput": request}, default=_json_default).encode()

    def answer(self, conversation: Conversation, record: Any) -> Conversation | RowError:
        error = record.get("error")
        if error or "modelOutput" not in record:
            error = error if isinstance(error, dict) else {"errorMessage": str(error or "no modelOutput")}
            code = error.get("errorCode")
            status = int(str(code)) if str(code).isdigit() else None
            message = f"{code or 'error'}: {error.get('errorMessage', '')}"
            return RowError(ErrorKind.BATCH_ERROR, message, status=status,
                            retryable=status is None or status in _RETRYABLE)  # fmt: skip
        return parse_converse_response(record["modelOutput"], conversation, self.engine.generation_params)

    def missing(self, info: BatchInfo) -> RowError:
        why = "; ".join(info.errors) or f"the job ended {info.status} before this row ran"
        return RowError(_FINAL.get(str(info.status), ErrorKind.BATCH_FAILED), why, retryable=True)

    # ------------------------------------------------------------------ calls
    def _s3(self, name: str) -> tuple[str, str]:
        bucket, _, prefix = self.s3_uri.removeprefix("s3://").partition("/")
        return bucket, f"{prefix}/{name}".lstrip("/")

    async def upload(self, batch: BatchInput) -> str:
        bucket, key = self._s3(f"{batch.name}/input.jsonl")
        data = b"\n".join(batch.requests) + b"\n"
        await self._call(1, "put_object", Bucket=bucket, Key=key, Body=data)  # same key: a retry overwrites
        return f"s3://{bucket}/{key}"

    async def create(self, batch: BatchInput, input_id: str | None) -> BatchInfo:
        bucket, key = self._s3(f"{batch.name}/output/")
        reply = await self._call(
            0,
            "create_model_invocation_job",
            jobName=batch.name,
            roleArn=self.role,
            clientRequestToken=batch.name,  # Bedrock answers a repeated token with the job it made
            modelId=self.model,
            modelInvocationType="Converse",
            inputDataConfig={"s3InputDataConfig": {"s3Uri": str(input_id), "s3InputFormat": "JSONL"}},
            outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{bucket}/{key}"}},
            timeoutDurationInHours=TIMEOUT_HOURS,
            tags=[{"key": k, "value": v} for k, v in batch.tag.items()],
        )
        return await self.retrieve(str(reply["jobArn"]))

    async def find(self, batch: BatchInput) -> BatchInfo | None:
        page = await self._call(0, "list_model_invocation_jobs", nameContains=batch.name, maxResults=100)
        for job in page.get("invocationJobSummaries") or []:
            if job.get("jobName") == batch.name:
                return self._info(job)
        return None

    async def retrieve(self, batch_id: str) -> BatchInfo:
        info = self._info(await self._call(0, "get_model_invocation_job", jobIdentifier=batch_id))
        if info.ended and info.output_file_id:  # the counts are in the job's manifest
            bucket, _, prefix = info.output_file_id.removeprefix("s3://").partition("/")
            try:
                body = await self._call(1, "get_object", Bucket=bucket, Key=prefix + "manifest.json.out")
                manifest = json.loads(await asyncio.to_thread(body["Body"].read))
            except (RemoteError, ValueError):
                return info  # no manifest (a job that failed before it ran): no counts
            names = {"totalRecordCount": "total", "successRecordCount": "completed", "errorRecordCount": "failed"}
            info.request_counts = {name: int(manifest[key]) for key, name in names.items() if key in manifest}
        return info

    async def results(self, info: BatchInfo) -> dict[str, Any]:
        if not info.output_file_id:
            return {}
        bucket, _, prefix = info.output_file_id.removeprefix("s3://").partition("/")
        records: dict[str, Any] = {}
        listing = await self._call(1, "list_objects_v2", Bucket=bucket, Prefix=prefix)
        for item in sorted(listing.get("Contents") or [], key=lambda o: str(o["Key"])):
            name = str(item["Key"])
            if not name.endswith(".jsonl.out"):
                continue
            body = await self._call(1, "get_object", Bucket=bucket, Key=name)
            data = await asyncio.to_thread(body["Body"].read)
            for raw in data.splitlines():
                if raw.strip():
                    record = json.loads(raw)
                    records[str(record.get("recordId"))] = record
        return records

    async def cancel(self, batch_id: str) -> BatchInfo:
        await self._call(0, "stop_model_invocation_job", jobIdentifier=batch_id)
        return await self.retrieve(batch_id)

    async def list(self, limit: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        token = ""
        while len(out) < limit:
            kwargs: dict[str, Any] = {"maxResults": min(100, limit - len(out)), "sortOrder": "Descending"}
            page = await self._call(
                0, "list_model_invocation_jobs", **kwargs, **({"nextToken": token} if token else {})
            )
            for job in page.get("invocationJobSummaries") or []:
                out.append({"id": job.get("jobArn"), "name": job.get("jobName"), "status": job.get("status"),
                            "created_at": str(job.get("submitTime") or "")})  # fmt: skip
            token = str(page.get("nextToken") or "")
            if not token or not page.get("invocationJobSummaries"):
                break
        return out[:limit]

    def _info(self, job: dict[str, Any]) -> BatchInfo:
        status = job.get("status")
        arn = str(job["jobArn"])
        output = ((job.get("outputDataConfig") or {}).get("s3OutputDataConfig") or {}).get("s3Uri")
        message = job.get("message")
        return BatchInfo(
            arn,
            status,
            status in _FINAL,
            {},
            [str(message)] if message and status != "Completed" else [],
            f"{str(output).rstrip('/')}/{arn.rsplit('/', 1)[-1]}/" if output else None,
        )
