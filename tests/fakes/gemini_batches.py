"""Fake of the Gemini API's Batch Mode (and the Files API it reads and writes) beside generateContent.

Written from Google's Batch Mode guide and the ``batches`` / ``media.upload`` REST references:

* ``POST /v1beta/models/{model}:batchGenerateContent`` ``{"batch": {"displayName", "inputConfig":
  {"requests": {"requests": [{"request": GenerateContentRequest, "metadata": {"key"}}]}} | {"fileName":
  "files/..."}}}``: inline requests up to 20 MB in all; a file of JSONL lines ``{"key", "request"}`` up to
  2 GB. Answers an Operation ``{"name": "batches/...", "metadata": GenerateContentBatch, "done"}`` whose
  metadata has ``model``, ``displayName``, ``state`` (``BATCH_STATE_PENDING``, ``BATCH_STATE_RUNNING``,
  ``BATCH_STATE_SUCCEEDED``, ``BATCH_STATE_FAILED``, ``BATCH_STATE_CANCELLED``, ``BATCH_STATE_EXPIRED``
  after 48 hours), ``createTime``, ``updateTime``, ``batchStats`` (``requestCount``,
  ``successfulRequestCount``, ``failedRequestCount``, ``pendingRequestCount``).
* ``GET /v1beta/batches/{id}`` (the Operation; when done, ``response`` holds ``inlinedResponses:
  {inlinedResponses: [{"response" | "error", "metadata": {"key"}}]}`` for inline input or
  ``responsesFile`` for a file); ``GET /v1beta/batches?pageSize=&pageToken=`` (``operations``,
  ``nextPageToken``); ``POST /v1beta/batches/{id}:cancel``.
* ``POST /upload/v1beta/files?uploadType=multipart`` (``multipart/related``: the File's metadata, then its
  bytes) answers ``{"file": File}``; ``GET /download/v1beta/files/{id}:download?alt=media`` its bytes.
  Output lines are ``{"key", "response"}`` or ``{"key", "error": Status}``, in any order (reversed here).
* Errors: ``{"error": {"code", "message", "status"}}``; the key in ``x-goog-api-key``.

Processing is scripted: one state per retrieval; ``fail_custom_ids`` (by key) end with an INTERNAL error
(worth retrying); ``expire_custom_ids`` are not reached, so the batch ends EXPIRED with the rest answered.
"""

from __future__ import annotations

import datetime as dt
import email.parser
import email.policy
import itertools
import json
from typing import Any

from aiohttp import web

from ._server import RECORDED, Handler, RequestInvalid
from .gemini import FakeGemini
from .stages import Holds

INLINE_BYTES = 20 * 2**20
_DONE = ("BATCH_STATE_SUCCEEDED", "BATCH_STATE_FAILED", "BATCH_STATE_CANCELLED", "BATCH_STATE_EXPIRED")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


class FakeGeminiBatches(FakeGemini, Holds):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        FakeGemini.__init__(self, *args, **kwargs)
        Holds.__init__(self)
        self.fail_custom_ids: set[str] = set()
        self.expire_custom_ids: set[str] = set()
        self.lose_create_replies = 0
        self.advance_on_poll = True
        self.batches: dict[str, dict[str, Any]] = {}
        self.files: dict[str, bytes] = {}
        self._inputs: dict[str, tuple[list[dict[str, Any]], bool]] = {}
        self._ids = itertools.count(1)

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", "/v1beta/models/{model_action}", self._models),
            ("GET", "/v1beta/batches", self._list),
            ("GET", "/v1beta/batches/{batch}", self._get),
            ("POST", "/v1beta/batches/{batch_action}", self._cancel),
            ("POST", "/upload/v1beta/files", self._upload),
            ("GET", "/download/v1beta/files/{file_action}", self._download),
        ]

    def _key_error(self, request: web.Request) -> web.Response | None:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if key != self.api_key:
            return self._error(
                400 if key else 403, "API key not valid. Please pass a valid API key.", "API_KEY_INVALID"
            )
        return None

    async def _models(self, request: web.Request) -> web.StreamResponse:
        await self.wait_if_held("POST", request.path)
        model, _, action = request.match_info["model_action"].partition(":")
        if action != "batchGenerateContent":
            return await self._handle(request)
        if (denied := self._key_error(request)) is not None:
            return denied
        body = request[RECORDED].json
        batch = body.get("batch") if isinstance(body, dict) else None
        source = (batch or {}).get("inputConfig") or {}
        if not isinstance(batch, dict) or set(source) not in ({"requests"}, {"fileName"}):
            return self._error(400, "batch.inputConfig needs exactly one of requests or fileName.")
        if "requests" in source:
            if len(request[RECORDED].body) > INLINE_BYTES:
                return self._error(400, "Inline batch requests are limited to 20 MB; use a file.")
            items = source["requests"].get("requests") or []
            lines = [{"key": (i.get("metadata") or {}).get("key"), "request": i.get("request")} for i in items]
            inline = True
        else:
            data = self.files.get(source["fileName"])
            if data is None:
                return self._error(404, f"File {source['fileName']} not found.")
            lines = [json.loads(raw) for raw in data.splitlines() if raw.strip()]
            inline = False
        name = f"batches/b{next(self._ids):05d}"
        now = _now()
        meta = {"@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatch", "name": name,
                "model": f"models/{model}", "displayName": batch.get("displayName", ""), "state": "BATCH_STATE_PENDING",
                "createTime": now, "updateTime": now,
                "batchStats": {"requestCount": str(len(lines)), "pendingRequestCount": str(len(lines))}}  # fmt: skip
        self.batches[name] = {"name": name, "metadata": meta, "done": False}
        self._inputs[name] = (lines, inline)
        await self.wait_if_held("POST", request.path, after=True)  # created; the reply may never arrive
        if self.lose_create_replies > 0:
            self.lose_create_replies -= 1
            return self._error(503, "The service is currently unavailable.")
        return web.json_response(self.batches[name])

    async def _get(self, request: web.Request) -> web.Response:
        if (denied := self._key_error(request)) is not None:
            return denied
        await self.wait_if_held("GET", request.path)
        operation = self.batches.get("batches/" + request.match_info["batch"])
        if operation is None:
            return self._error(404, f"Batch {request.match_info['batch']} not found.")
        if self.advance_on_poll:
            self._step(operation)
        return web.json_response(operation)

    async def _cancel(self, request: web.Request) -> web.Response:
        if (denied := self._key_error(request)) is not None:
            return denied
        batch_id, _, action = request.match_info["batch_action"].partition(":")
        operation = self.batches.get("batches/" + batch_id)
        if action != "cancel" or operation is None:
            return self._error(404, f"Batch {batch_id} not found.")
        if operation["done"]:
            return self._error(400, "The batch has already finished.")
        operation["metadata"].update(state="BATCH_STATE_CANCELLED", updateTime=_now())
        operation["done"] = True
        return web.json_response({})

    async def _list(self, request: web.Request) -> web.Response:
        if (denied := self._key_error(request)) is not None:
            return denied
        operations = list(reversed(self.batches.values()))  # most recent first
        size = int(request.query.get("pageSize", "50"))
        start = int(request.query.get("pageToken") or 0)
        page = {"operations": operations[start : start + size]}
        if start + size < len(operations):
            page["nextPageToken"] = str(start + size)
        return web.json_response(page)

    async def _upload(self, request: web.Request) -> web.Response:
        if (denied := self._key_error(request)) is not None:
            return denied
        await self.wait_if_held("POST", request.path)
        if request.query.get("uploadType") != "multipart" or request.content_type != "multipart/related":
            return self._error(400, "Expected uploadType=multipart with a multipart/related body.")
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + request.headers["Content-Type"].encode() + b"\r\n\r\n" + request[RECORDED].body
        )
        parts = list(message.iter_parts())  # type: ignore[attr-defined]
        if len(parts) != 2:
            return self._error(400, "A multipart upload has the metadata part, then the media part.")
        meta = json.loads(parts[0].get_payload(decode=True) or b"{}").get("file") or {}
        name = f"files/f{next(self._ids):05d}"
        data = parts[1].get_payload(decode=True) or b""
        self.files[name] = data
        file = {"name": name, "displayName": meta.get("displayName"), "mimeType": meta.get("mimeType"),
                "sizeBytes": str(len(data)), "createTime": _now(), "state": "ACTIVE"}  # fmt: skip
        return web.json_response({"file": file})

    async def _download(self, request: web.Request) -> web.Response:
        if (denied := self._key_error(request)) is not None:
            return denied
        await self.wait_if_held("GET", request.path)
        file_id, _, action = request.match_info["file_action"].partition(":")
        data = self.files.get("files/" + file_id)
        if action != "download" or request.query.get("alt") != "media" or data is None:
            return self._error(404, f"File files/{file_id} not found.")
        return web.Response(body=data, content_type="application/octet-stream")

    # -------------------------------------------------------------- processing
    def finish_all(self) -> None:
        for operation in self.batches.values():
            for _ in range(3):
                self._step(operation)

    def _step(self, operation: dict[str, Any]) -> None:
        meta = operation["metadata"]
        meta["updateTime"] = _now()
        if meta["state"] == "BATCH_STATE_PENDING":
            meta["state"] = "BATCH_STATE_RUNNING"
        elif meta["state"] == "BATCH_STATE_RUNNING":
            self._run(operation)

    def _run(self, operation: dict[str, Any]) -> None:
        lines, inline = self._inputs[operation["name"]]
        model = operation["metadata"]["model"].removeprefix("models/")
        out: list[dict[str, Any]] = []
        expired = False
        for line in lines:
            key = str(line.get("key"))
            if key in self.expire_custom_ids:
                expired = True
                continue
            try:
                if key in self.fail_custom_ids:
                    raise RequestInvalid("Internal error encountered.", 500)
                out.append({"key": key, "response": self.answer(model, line.get("request"))})
            except (RequestInvalid, ValueError) as exc:
                status = getattr(exc, "status", 400)
                code, word = (13, "INTERNAL") if status >= 500 else (3, "INVALID_ARGUMENT")
                out.append({"key": key, "error": {"code": code, "message": str(exc), "status": word}})
        out.reverse()  # any order
        ok = sum(1 for o in out if "response" in o)
        operation["metadata"]["batchStats"] = {"requestCount": str(len(lines)), "successfulRequestCount": str(ok),
                                               "failedRequestCount": str(len(out) - ok)}  # fmt: skip
        if inline:
            responses = [{k: v for k, v in o.items() if k != "key"} | {"metadata": {"key": o["key"]}} for o in out]
            response: dict[str, Any] = {"inlinedResponses": {"inlinedResponses": responses}}
        else:
            name = f"files/f{next(self._ids):05d}"
            self.files[name] = "".join(json.dumps(o) + "\n" for o in out).encode()
            response = {"responsesFile": name}
        response["@type"] = "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatchOutput"
        operation["metadata"]["output"] = response
        operation["metadata"]["state"] = "BATCH_STATE_EXPIRED" if expired else "BATCH_STATE_SUCCEEDED"
        operation.update(done=True, response=response)
