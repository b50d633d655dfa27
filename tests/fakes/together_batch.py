"""Fake of Together AI's Batch API (Files + Batches) beside its OpenAI-compatible chat completions.

Written from Together's batch documentation and API reference (create, retrieve, cancel, list; the
files API with purpose ``batch-api``), where it differs from OpenAI's (:class:`FakeOpenAIBatch`):

* ``POST /v1/files`` (multipart ``file`` + ``purpose``): batch input files have purpose ``batch-api``, are
  ``.jsonl`` and at most 100 MB.
* Input lines are ``{"custom_id", "body"}``: ``custom_id`` a string of at most 64 characters, unique in
  the file; ``body`` a chat-completions body. At most 50,000 requests per batch; one model.
* ``POST /v1/batches`` ``{"input_file_id", "endpoint", "completion_window"?, "priority"?, "model_id"?}``
  answers 201 with ``{"job": <batch>}`` (and ``warning`` where there is one); ``GET /v1/batches/{id}``
  answers the batch itself: ``id`` (a UUID), ``user_id``, ``input_file_id``, ``file_size_bytes``,
  ``status`` (``VALIDATING``, ``IN_PROGRESS``, ``COMPLETED``, ``FAILED``, ``EXPIRED``, ``CANCELLED``),
  ``job_deadline``, ``created_at``, ``endpoint``, ``progress`` (0-100), ``model_id``,
  ``output_file_id``, ``error_file_id``, ``error``, ``completed_at`` (ISO 8601 times).
* ``POST /v1/batches/{id}/cancel`` while ``VALIDATING`` or ``IN_PROGRESS``; ``GET /v1/batches``: a JSON
  array of batches.
* Output lines ``{"id", "custom_id", "response": {"status_code", "request_id", "body"}}`` (any order:
  this fake reverses them); failed requests go to the error file as ``{"custom_id", "error": {"message",
  "code"}}``. A COMPLETED batch can hold failed requests; an EXPIRED or CANCELLED one keeps what it
  answered before and has no line for the rest.
* Errors: ``{"error": {"message", "type", "param", "code"}}``, bearer auth.

Processing is scripted: the batch advances one state per retrieval (``advance_on_poll``);
``fail_custom_ids`` fail (``fail_status`` 500: worth retrying, 400: invalid); ``expire_custom_ids`` are
not reached before the deadline, so the batch ends EXPIRED with every other request answered.
:class:`~tests.fakes.stages.Holds` lets a test hold a request at one stage and kill its client.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from typing import Any

from aiohttp import web

from ._openai_chat import chat_completion, validate_chat_body
from ._server import RECORDED, Handler, RequestInvalid
from .openai_batch import FakeOpenAIBatch, _Batch, _File, _parse_multipart
from .stages import Holds

_FIELDS = {"input_file_id", "endpoint", "completion_window", "priority", "model_id"}
_FINAL = ("COMPLETED", "FAILED", "EXPIRED", "CANCELLED")


def _iso(at: float | None = None) -> str:
    return dt.datetime.fromtimestamp(at or time.time(), dt.timezone.utc).isoformat().replace("+00:00", "Z")


class FakeTogetherBatch(FakeOpenAIBatch, Holds):
    def __init__(self, *args: Any, expire_custom_ids: set[str] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("max_bytes", 100 * 2**20)
        FakeOpenAIBatch.__init__(self, *args, **kwargs)
        Holds.__init__(self)
        self.expire_custom_ids = set(expire_custom_ids or ())

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", "/v1/files", self._upload),
            ("GET", "/v1/files/{file_id}", self._file),
            ("GET", "/v1/files/{file_id}/content", self._held_content),
            ("POST", "/v1/batches", self._create),
            ("GET", "/v1/batches", self._list),
            ("GET", "/v1/batches/{batch_id}", self._retrieve),
            ("POST", "/v1/batches/{batch_id}/cancel", self._cancel),
            ("POST", "/v1/chat/completions", self._held_chat),
        ]

    async def _held_content(self, request: web.Request) -> web.Response:
        await self.wait_if_held("GET", request.path)
        return await self._content(request)

    async def _held_chat(self, request: web.Request) -> web.Response:
        await self.wait_if_held("POST", request.path)
        return await self._chat(request)

    # ------------------------------------------------------------------- files
    async def _upload(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        await self.wait_if_held("POST", request.path)
        if request.content_type != "multipart/form-data":
            return self._error(400, "Expected a multipart/form-data body with 'file' and 'purpose'.")
        fields, files = _parse_multipart(request.headers["Content-Type"], request[RECORDED].body)
        if "file" not in files:
            return self._error(400, "Missing required parameter: 'file'.", param="file")
        purpose = fields.get("purpose")
        if purpose not in ("batch-api", "fine-tune", "eval"):
            return self._error(400, f"Invalid purpose {purpose!r}: batch input files need 'batch-api'.")
        filename, data = files["file"]
        if purpose == "batch-api":
            if not filename.endswith(".jsonl"):
                return self._error(400, "Batch input files must be .jsonl", param="file")
            if len(data) > self.max_bytes:
                return self._error(400, f"File is {len(data)} bytes, over the {self.max_bytes}-byte limit.")
        file = _File(self._new_id("file-"), filename, purpose, data, int(time.time()))
        self.files[file.id] = file
        return web.json_response(file.public())

    # ----------------------------------------------------------------- batches
    async def _create(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        body = request[RECORDED].json
        if not isinstance(body, dict):
            return self._error(400, "Could not parse the JSON body.")
        unknown = sorted(set(body) - _FIELDS)
        if unknown:
            return self._error(400, f"Unrecognized request argument supplied: {unknown[0]}")
        for name in ("input_file_id", "endpoint"):
            if name not in body:
                return self._error(400, f"Missing required parameter: '{name}'.", param=name)
        if body["endpoint"] != "/v1/chat/completions":
            return self._error(400, f"Unsupported endpoint {body['endpoint']!r}.", param="endpoint")
        if body.get("completion_window", "24h") != "24h":
            return self._error(400, "completion_window must be 24h.", param="completion_window")
        file = self.files.get(body["input_file_id"])
        if file is None:
            return self._error(404, f"File {body['input_file_id']} not found.", param="input_file_id")
        if file.purpose != "batch-api":
            return self._error(400, "The input file must be uploaded with purpose 'batch-api'.")
        now = time.time()
        obj = {
            "id": str(uuid.uuid4()), "user_id": "user_fake", "input_file_id": file.id,
            "file_size_bytes": len(file.data), "status": "VALIDATING", "job_deadline": _iso(now + 86400),
            "created_at": _iso(now), "endpoint": body["endpoint"], "progress": 0,
            "model_id": body.get("model_id"), "output_file_id": None, "error_file_id": None, "error": None,
            "completed_at": None,
        }  # fmt: skip
        self.batches[obj["id"]] = _Batch(obj)
        await self.wait_if_held("POST", request.path, after=True)  # created; the reply may never arrive
        if self.lose_create_replies > 0:
            self.lose_create_replies -= 1
            return self._error(502, "Bad gateway")
        return web.json_response({"job": obj}, status=201)

    async def _retrieve(self, request: web.Request) -> web.Response:
        await self.wait_if_held("GET", request.path)
        return await super()._retrieve(request)

    async def _cancel(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return self._error(404, f"Batch {request.match_info['batch_id']} not found.")
        if batch.obj["status"] not in ("VALIDATING", "IN_PROGRESS"):
            return self._error(400, f"Cannot cancel a batch with status {batch.obj['status']}.")
        batch.obj.update(status="CANCELLED", completed_at=_iso())
        return web.json_response(batch.obj)

    async def _list(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        return web.json_response([b.obj for b in self.batches.values()])

    # -------------------------------------------------------------- processing
    def finish_all(self) -> None:
        for batch in self.batches.values():
            for _ in range(3):
                self._advance(batch)

    def _advance(self, batch: _Batch) -> None:
        obj = batch.obj
        if obj["status"] == "VALIDATING":
            problem = self._check(batch)
            if problem:
                obj.update(status="FAILED", error=problem, completed_at=_iso())
            else:
                obj.update(status="IN_PROGRESS")
        elif obj["status"] == "IN_PROGRESS":
            self._run(batch)
            expired = any(line["custom_id"] in self.expire_custom_ids for line in batch.lines)
            obj.update(status="EXPIRED" if expired else "COMPLETED", progress=100, completed_at=_iso())

    def _check(self, batch: _Batch) -> str | None:
        lines = [json.loads(line) for line in self.files[batch.obj["input_file_id"]].data.decode().splitlines() if line]
        if len(lines) > self.max_requests:
            return f"The batch has {len(lines)} requests; the limit is {self.max_requests}."
        seen: set[str] = set()
        models: set[str] = set()
        for number, line in enumerate(lines, 1):
            if not isinstance(line, dict) or set(line) != {"custom_id", "body"}:
                return f"line {number}: each line needs exactly custom_id and body"
            cid = line["custom_id"]
            if not isinstance(cid, str) or not cid or len(cid) > 64 or cid in seen:
                return f"line {number}: custom_id must be a unique string of 1 to 64 characters"
            seen.add(cid)
            models.add(str((line["body"] or {}).get("model")))
        if len(models) > 1 or (batch.obj["model_id"] and models != {batch.obj["model_id"]}):
            return f"all requests of a batch must use its model, got {sorted(models)}"
        batch.lines = lines
        return None

    def _run(self, batch: _Batch) -> None:
        outputs: list[str] = []
        failures: list[str] = []
        for line in batch.lines:
            cid = line["custom_id"]
            if cid in self.expire_custom_ids:
                continue  # not reached before the deadline: no line in either file
            request_id = self._new_id("req_")
            try:
                if cid in self.fail_custom_ids:
                    raise RequestInvalid("This request was rejected by the fake (fail_custom_ids).", self.fail_status)
                exchange = validate_chat_body(line["body"])
                reply = chat_completion(line["body"], exchange, self.responder, f"chatcmpl-{request_id}")
                record = {"id": request_id, "custom_id": cid,
                          "response": {"status_code": 200, "request_id": request_id, "body": reply}}  # fmt: skip
                outputs.append(json.dumps(record))
            except RequestInvalid as exc:
                code = "invalid_request" if exc.status == 400 else "internal_server_error"
                failures.append(json.dumps({"custom_id": cid, "error": {"message": str(exc), "code": code}}))
        for name, lines, key in (("output", outputs, "output_file_id"), ("errors", failures, "error_file_id")):
            if lines:
                data = ("\n".join(reversed(lines)) + "\n").encode()
                file = _File(self._new_id("file-"), f"batch_{name}.jsonl", "batch-api", data, int(time.time()))
                self.files[file.id] = file
                batch.obj[key] = file.id
