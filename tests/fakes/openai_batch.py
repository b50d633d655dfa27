"""Fake of OpenAI's Files and Batches APIs (the Batch API workflow).

Written from OpenAI's API reference (Files: upload, retrieve, content, delete; Batch:
create, retrieve, cancel, list; the batch input/output line formats):

* ``POST /v1/files`` multipart form with ``purpose`` (``batch``) and ``file`` (a ``.jsonl``
  file) returns a File object ``{"id": "file-...", "object": "file", "bytes", "created_at",
  "filename", "purpose", "status"}``. Input files: at most 50,000 requests and 200 MB.
* Input lines: ``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}``;
  ``custom_id`` unique within the file; every line uses the same ``body.model``.
* ``POST /v1/batches`` ``{"input_file_id", "endpoint", "completion_window": "24h",
  "metadata"?}`` returns a Batch object: ``status`` goes validating -> in_progress ->
  finalizing -> completed (or failed / expired / cancelling -> cancelled), with
  ``output_file_id``, ``error_file_id``, ``request_counts {total, completed, failed}``,
  ``errors`` and ``*_at`` timestamps.
* Output/error lines: ``{"id": "batch_req_...", "custom_id", "response": {"status_code",
  "request_id", "body"}, "error"}``; output order is **not** the input order (this fake
  reverses it), so clients must match by ``custom_id``.
* Errors: ``{"error": {"message", "type", "param", "code"}}``; auth by ``Authorization:
  Bearer``.
* ``POST /v1/chat/completions`` answers online too, for rows rerun outside a batch.

The batch advances one state per ``GET /v1/batches/{id}`` (``advance_on_poll``) or through
:meth:`FakeOpenAIBatch.finish_all`.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ._openai_chat import chat_completion, validate_chat_body
from ._server import RECORDED, FakeServer, Handler, RequestInvalid, Responder, default_responder

_ENDPOINTS = {"/v1/chat/completions"}
_LINE_FIELDS = {"custom_id", "method", "url", "body"}
_BATCH_FIELDS = {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}


@dataclass
class _File:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def public(self) -> dict:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


@dataclass
class _Batch:
    obj: dict
    lines: list[dict] = field(default_factory=list)


class FakeOpenAIBatch(FakeServer):
    def __init__(
        self,
        api_key: str = "sk-test",
        responder: Responder = default_responder,
        max_requests: int = 50_000,
        max_bytes: int = 200 * 2**20,
        completion_windows: tuple[str, ...] = ("24h",),
        advance_on_poll: bool = True,
        fail_custom_ids: set[str] | None = None,
        fail_status: int = 400,
    ):
        super().__init__()
        self.api_key = api_key
        self.responder = responder
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.completion_windows = completion_windows
        self.advance_on_poll = advance_on_poll
        self.fail_custom_ids = set(fail_custom_ids or ())
        self.fail_status = fail_status  # 400: the request is wrong; 500: the provider failed it (worth retrying)
        #: Create the next N batches but answer 502, as when a reply is lost after the server acted.
        self.lose_create_replies = 0
        self.files: dict[str, _File] = {}
        self.batches: dict[str, _Batch] = {}
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ routes
    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", "/v1/files", self._upload),
            ("GET", "/v1/files/{file_id}", self._file),
            ("GET", "/v1/files/{file_id}/content", self._content),
            ("DELETE", "/v1/files/{file_id}", self._delete_file),
            ("POST", "/v1/batches", self._create),
            ("GET", "/v1/batches", self._list),
            ("GET", "/v1/batches/{batch_id}", self._retrieve),
            ("POST", "/v1/batches/{batch_id}/cancel", self._cancel),
            ("POST", "/v1/chat/completions", self._chat),
        ]

    async def _chat(self, request: web.Request) -> web.Response:
        """Online chat completions, for rows rerun outside the batch."""
        if (denied := self._auth(request)) is not None:
            return denied
        body = request[RECORDED].json
        try:
            exchange = validate_chat_body(body)
        except RequestInvalid as exc:
            return self._error(exc.status, str(exc))
        return web.json_response(chat_completion(body, exchange, self.responder, self._new_id("chatcmpl-")))

    def error_body(self, status: int, message: str, code: str | None = None, param: str | None = None) -> Any:
        kind = {
            401: "invalid_request_error",
            404: "invalid_request_error",
            429: "rate_limit_exceeded",
            500: "server_error",
        }.get(status, "invalid_request_error")
        return {"error": {"message": message, "type": kind, "param": param, "code": code}}

    def _error(self, status: int, message: str, code: str | None = None, param: str | None = None) -> web.Response:
        return web.json_response(self.error_body(status, message, code, param), status=status)

    def _auth(self, request: web.Request) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return self._error(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        if auth[len("Bearer ") :] != self.api_key:
            return self._error(401, "Incorrect API key provided.", code="invalid_api_key")
        return None

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):06d}"

    # ------------------------------------------------------------------- files
    async def _upload(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        if request.content_type != "multipart/form-data":
            return self._error(400, "Expected a multipart/form-data body with 'file' and 'purpose'.")
        fields, files = _parse_multipart(request.headers["Content-Type"], request[RECORDED].body)
        if "purpose" not in fields:
            return self._error(400, "Missing required parameter: 'purpose'.", param="purpose")
        if "file" not in files:
            return self._error(400, "Missing required parameter: 'file'.", param="file")
        unknown = sorted(set(fields) - {"purpose", "expires_after"})
        if unknown:
            return self._error(400, f"Unrecognized request argument supplied: {unknown[0]}")
        filename, data = files["file"]
        purpose = fields["purpose"]
        if purpose not in ("batch", "fine-tune", "assistants", "vision", "user_data", "evals"):
            return self._error(400, f"'{purpose}' is not one of the supported purposes.", param="purpose")
        if purpose == "batch":
            if not filename.endswith(".jsonl"):
                return self._error(400, "Invalid file format for Batch API. Must be .jsonl", param="file")
            if len(data) > self.max_bytes:
                return self._error(
                    400,
                    f"File is too large: {len(data)} bytes, the maximum for a batch "
                    f"input file is {self.max_bytes} bytes.",
                    param="file",
                )
            for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
                try:
                    json.loads(line)
                except ValueError:
                    return self._error(
                        400, f"Invalid file format for Batch API. Line {number} is not valid JSON.", param="file"
                    )
        file = _File(self._new_id("file-"), filename, purpose, data, int(time.time()))
        self.files[file.id] = file
        return web.json_response(file.public())

    async def _file(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        file = self.files.get(request.match_info["file_id"])
        if file is None:
            return self._error(404, f"No such File object: {request.match_info['file_id']}", param="id")
        return web.json_response(file.public())

    async def _content(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        file = self.files.get(request.match_info["file_id"])
        if file is None:
            return self._error(404, f"No such File object: {request.match_info['file_id']}", param="id")
        return web.Response(body=file.data, content_type="application/octet-stream")

    async def _delete_file(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        file_id = request.match_info["file_id"]
        if self.files.pop(file_id, None) is None:
            return self._error(404, f"No such File object: {file_id}", param="id")
        return web.json_response({"id": file_id, "object": "file", "deleted": True})

    # ----------------------------------------------------------------- batches
    async def _create(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        body = request[RECORDED].json
        if not isinstance(body, dict):
            return self._error(400, "We could not parse the JSON body of your request.")
        unknown = sorted(set(body) - _BATCH_FIELDS)
        if unknown:
            return self._error(400, f"Unrecognized request argument supplied: {unknown[0]}")
        for name in ("input_file_id", "endpoint", "completion_window"):
            if name not in body:
                return self._error(400, f"Missing required parameter: '{name}'.", param=name)
        if body["endpoint"] not in _ENDPOINTS:
            return self._error(400, f"Invalid value for 'endpoint': {body['endpoint']}.", param="endpoint")
        if body["completion_window"] not in self.completion_windows:
            return self._error(
                400,
                f"Invalid value for 'completion_window': {body['completion_window']}. "
                f"Supported values are: {', '.join(self.completion_windows)}.",
                param="completion_window",
            )
        metadata = body.get("metadata")
        if metadata is not None and (
            not isinstance(metadata, dict)
            or len(metadata) > 16
            or not all(isinstance(v, str) and len(v) <= 512 for v in metadata.values())
        ):
            return self._error(400, "Invalid 'metadata': at most 16 string pairs.", param="metadata")
        file = self.files.get(body["input_file_id"])
        if file is None:
            return self._error(404, f"No such File object: {body['input_file_id']}", param="input_file_id")
        if file.purpose != "batch":
            return self._error(400, "The input file must be uploaded with purpose 'batch'.", param="input_file_id")
        now = int(time.time())
        obj = {
            "id": self._new_id("batch_"),
            "object": "batch",
            "endpoint": body["endpoint"],
            "errors": None,
            "input_file_id": file.id,
            "completion_window": body["completion_window"],
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + 86400,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": metadata,
        }
        self.batches[obj["id"]] = _Batch(obj)
        if self.lose_create_replies > 0:  # the batch exists, but the client never hears so
            self.lose_create_replies -= 1
            return self._error(502, "Bad gateway")
        return web.json_response(obj)

    async def _retrieve(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return self._error(404, f"No such Batch: {request.match_info['batch_id']}", param="batch_id")
        if self.advance_on_poll:
            self._advance(batch)
        return web.json_response(batch.obj)

    async def _cancel(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return self._error(404, f"No such Batch: {request.match_info['batch_id']}", param="batch_id")
        if batch.obj["status"] in ("completed", "failed", "expired", "cancelled"):
            return self._error(409, f"Cannot cancel a batch with status '{batch.obj['status']}'.")
        batch.obj.update(status="cancelling", cancelling_at=int(time.time()))
        return web.json_response(batch.obj)

    async def _list(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        items = sorted((b.obj for b in self.batches.values()), key=lambda o: o["id"], reverse=True)
        after = request.query.get("after")
        if after:
            ids = [o["id"] for o in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        limit = int(request.query.get("limit", "20"))
        page = items[:limit]
        return web.json_response(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(items) > limit,
            }
        )

    # -------------------------------------------------------------- processing
    def finish_all(self) -> None:
        """Drive every batch to a final state."""
        for batch in self.batches.values():
            for _ in range(4):
                self._advance(batch)

    def _advance(self, batch: _Batch) -> None:
        obj = batch.obj
        now = int(time.time())
        status = obj["status"]
        if status == "validating":
            errors = self._validate_input(batch)
            if errors:
                obj.update(status="failed", failed_at=now, errors={"object": "list", "data": errors})
            else:
                obj.update(status="in_progress", in_progress_at=now)
                obj["request_counts"]["total"] = len(batch.lines)
        elif status == "in_progress":
            obj.update(status="finalizing", finalizing_at=now)
        elif status == "finalizing":
            self._run(batch)
            obj.update(status="completed", completed_at=now)
        elif status == "cancelling":
            obj.update(status="cancelled", cancelled_at=now)

    def _validate_input(self, batch: _Batch) -> list[dict]:
        data = self.files[batch.obj["input_file_id"]].data.decode("utf-8")
        errors: list[dict] = []
        seen: set[str] = set()
        models: set[str] = set()
        lines = [json.loads(line) for line in data.splitlines() if line.strip()]
        if len(lines) > self.max_requests:
            return [
                {
                    "code": "too_many_requests",
                    "line": None,
                    "param": None,
                    "message": f"The batch input file has {len(lines)} requests; the limit is {self.max_requests}.",
                }
            ]
        for number, line in enumerate(lines, 1):
            problem = None
            if not isinstance(line, dict) or set(line) != _LINE_FIELDS:
                problem = ("invalid_request", f"each line needs exactly {sorted(_LINE_FIELDS)}")
            elif line["method"] != "POST":
                problem = ("invalid_method", "method must be POST")
            elif line["url"] != batch.obj["endpoint"]:
                problem = ("mismatched_url", f"url {line['url']!r} does not match the batch endpoint")
            elif not isinstance(line["custom_id"], str) or line["custom_id"] in seen:
                problem = ("duplicate_custom_id", f"custom_id {line['custom_id']!r} is not unique")
            else:
                seen.add(line["custom_id"])
                models.add(str((line["body"] or {}).get("model")))
            if problem:
                errors.append({"code": problem[0], "message": problem[1], "param": None, "line": number})
        if len(models) > 1:
            errors.append(
                {
                    "code": "mixed_models",
                    "param": "body.model",
                    "line": None,
                    "message": f"All requests in a batch must use the same model, got {sorted(models)}.",
                }
            )
        batch.lines = lines
        return errors

    def _run(self, batch: _Batch) -> None:
        outputs: list[str] = []
        failures: list[str] = []
        for line in batch.lines:
            request_id = self._new_id("req_")
            record: dict[str, Any] = {"id": self._new_id("batch_req_"), "custom_id": line["custom_id"], "error": None}
            try:
                if line["custom_id"] in self.fail_custom_ids:
                    raise RequestInvalid("This request was rejected by the fake (fail_custom_ids).", self.fail_status)
                exchange = validate_chat_body(line["body"])
                reply = chat_completion(line["body"], exchange, self.responder, f"chatcmpl-{request_id}")
                record["response"] = {"status_code": 200, "request_id": request_id, "body": reply}
                outputs.append(json.dumps(record))
            except RequestInvalid as exc:
                record["response"] = {
                    "status_code": exc.status,
                    "request_id": request_id,
                    "body": self.error_body(exc.status, str(exc)),
                }
                failures.append(json.dumps(record))
        now = int(time.time())
        if outputs:
            out = _File(
                self._new_id("file-"),
                "batch_output.jsonl",
                "batch_output",
                ("\n".join(reversed(outputs)) + "\n").encode(),
                now,
            )
            self.files[out.id] = out
            batch.obj["output_file_id"] = out.id
        if failures:
            err = _File(
                self._new_id("file-"),
                "batch_errors.jsonl",
                "batch_output",
                ("\n".join(reversed(failures)) + "\n").encode(),
                now,
            )
            self.files[err.id] = err
            batch.obj["error_file_id"] = err.id
        batch.obj["request_counts"].update(completed=len(outputs), failed=len(failures))


def _parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, tuple[str, bytes]]]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    fields: dict[str, str] = {}
    files: dict[str, tuple[str, bytes]] = {}
    for part in message.iter_parts():  # type: ignore[attr-defined]
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None:
            files[str(name)] = (filename, payload)
        else:
            fields[str(name)] = payload.decode("utf-8")
    return fields, files
