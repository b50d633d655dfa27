"""The routes of OpenAI's Files and Batch APIs on ``infermux serve`` (see docs/serve.md).

``POST /v1/files`` (multipart: ``purpose=batch`` and a ``.jsonl`` file of at most 200 MB), ``GET
/v1/files``, ``GET /v1/files/{id}``, ``GET /v1/files/{id}/content``, ``DELETE /v1/files/{id}``;
``POST /v1/batches``, ``GET /v1/batches``, ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``.
Objects, list pages (``after``, ``limit``) and errors have OpenAI's shapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import BodyPartReader, web

from infermux.serve.batch_runner import TERMINAL
from infermux.serve.batch_store import MAX_FILE_BYTES, page
from infermux.serve.guard import parse_json, read_body
from infermux.serve.wire import ApiError

if TYPE_CHECKING:
    from infermux.serve.app import ServerState
    from infermux.serve.batch_runner import BatchRunner

__all__ = ["add_routes"]

_ENDPOINTS = ("/v1/chat/completions",)
_UPLOAD_SECONDS = 600.0  # the most an upload may take (a 200 MB file on a slow link)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/files", upload)
    app.router.add_get("/v1/files", list_files)
    app.router.add_get("/v1/files/{file_id}", retrieve_file)
    app.router.add_get("/v1/files/{file_id}/content", file_content)
    app.router.add_delete("/v1/files/{file_id}", delete_file)
    app.router.add_post("/v1/batches", create_batch)
    app.router.add_get("/v1/batches", list_batches)
    app.router.add_get("/v1/batches/{batch_id}", retrieve_batch)
    app.router.add_post("/v1/batches/{batch_id}/cancel", cancel_batch)


def _runner(request: web.Request) -> BatchRunner:
    from infermux.serve.app import STATE

    state: ServerState = request.app[STATE]
    if state.batches is None:
        raise ApiError("This server runs no Batch API (start it with --batch-dir).", status=404, code="not_found")
    return state.batches


def _limit(request: web.Request, default: int, most: int) -> int:
    raw = request.query.get("limit", str(default))
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= most:
        raise ApiError(
            f"Invalid 'limit': {raw!r}; it must be between 1 and {most}.", param="limit", code="invalid_value"
        )
    return limit


# ---------------------------------------------------------------------- files


async def upload(request: web.Request) -> web.Response:
    runner = _runner(request)
    if request.content_type != "multipart/form-data":
        raise ApiError(
            "Upload a file as multipart/form-data with the fields 'purpose' and 'file'.", code="invalid_request"
        )
    tmp = runner.store.files_dir / f".upload.{os.getpid()}.{id(request)}.tmp"
    try:
        purpose, filename = await asyncio.wait_for(_read_form(request, tmp), _UPLOAD_SECONDS)
        if purpose is None:
            raise ApiError("Missing required parameter: 'purpose'.", param="purpose", code="missing_required_parameter")
        if filename is None:
            raise ApiError("Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
        if purpose != "batch":
            message = f"This server accepts files for the Batch API only: purpose must be 'batch', not {purpose!r}."
            raise ApiError(message, param="purpose", code="invalid_value")
        if not filename.endswith(".jsonl"):
            raise ApiError(
                "Invalid file format for Batch API. Must be .jsonl", param="file", code="invalid_file_format"
            )
        problem = await asyncio.to_thread(_jsonl_problem, tmp)
        if problem:
            raise ApiError(f"Invalid file format for Batch API. {problem}", param="file", code="invalid_file_format")
        obj = await asyncio.to_thread(runner.store.add_file, tmp, filename, purpose)
    except asyncio.TimeoutError:
        raise ApiError(f"The upload did not finish within {_UPLOAD_SECONDS:g} seconds.", status=408,
                       code="request_timeout", headers={"Connection": "close"}) from None  # fmt: skip
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return web.json_response(obj)


async def _read_form(request: web.Request, tmp: Path) -> tuple[str | None, str | None]:
    purpose: str | None = None
    filename: str | None = None
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == "purpose":
            purpose = (await part.read(decode=True))[:100].decode("utf-8", "replace")
        elif part.name == "file":
            filename = part.filename or "upload.jsonl"
            size = 0
            with tmp.open("wb") as out:
                while chunk := await part.read_chunk(1 << 20):
                    size += len(chunk)
                    if size > MAX_FILE_BYTES:
                        raise ApiError(f"File is too large: the most a batch input file may have is {MAX_FILE_BYTES} "
                                       "bytes.", status=413, param="file", code="file_too_large",
                                       headers={"Connection": "close"})  # fmt: skip
                    out.write(chunk)
        else:
            raise ApiError(f"Unrecognized request argument supplied: {part.name}", code="unknown_parameter")
    return purpose, filename


def _jsonl_problem(path: Path) -> str | None:
    """Why the file is not JSON Lines (naming the first bad line), or None."""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                json.loads(raw)
            except (ValueError, RecursionError):
                return f"Line {number} is not valid JSON."
    return None


async def list_files(request: web.Request) -> web.Response:
    runner = _runner(request)
    limit = _limit(request, 10_000, 10_000)
    order = request.query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ApiError(f"Invalid 'order': {order!r}; use 'asc' or 'desc'.", param="order", code="invalid_value")
    files = sorted(runner.store.files(), key=lambda f: (f["created_at"], f["id"]), reverse=order == "desc")
    purpose = request.query.get("purpose")
    if purpose:
        files = [f for f in files if f["purpose"] == purpose]
    return web.json_response(page(files, request.query.get("after"), limit))


def _file(request: web.Request) -> dict[str, Any]:
    file_id = request.match_info["file_id"]
    obj = _runner(request).store.file(file_id)
    if obj is None:
        raise ApiError(f"No such File object: {file_id}", status=404, param="id", code="not_found")
    return obj


async def retrieve_file(request: web.Request) -> web.Response:
    return web.json_response(_file(request))


async def file_content(request: web.Request) -> web.FileResponse:
    obj = _file(request)
    path = _runner(request).store.data_path(obj["id"])
    return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})


async def delete_file(request: web.Request) -> web.Response:
    obj = _file(request)
    _runner(request).store.delete_file(obj["id"])
    return web.json_response({"id": obj["id"], "object": "file", "deleted": True})


# -------------------------------------------------------------------- batches


async def create_batch(request: web.Request) -> web.Response:
    from infermux.serve.app import STATE

    runner = _runner(request)
    state: ServerState = request.app[STATE]
    body = parse_json(await read_body(request, state.limits))
    if not isinstance(body, dict):
        raise ApiError("The request body must be a JSON object.", code="invalid_request")
    unknown = sorted(set(body) - {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"})
    if unknown:
        raise ApiError(
            f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0], code="unknown_parameter"
        )
    for name in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(body.get(name), str):
            raise ApiError(f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")
    if body["endpoint"] not in _ENDPOINTS:
        raise ApiError(f"Invalid 'endpoint': {body['endpoint']!r}; this server runs batches of "
                       f"{', '.join(_ENDPOINTS)}.", param="endpoint", code="invalid_value")  # fmt: skip
    if body["completion_window"] != "24h":
        raise ApiError(f"Invalid 'completion_window': {body['completion_window']!r}; the only value is '24h'.",
                       param="completion_window", code="invalid_value")  # fmt: skip
    metadata = body.get("metadata")
    if metadata is not None and not _valid_metadata(metadata):
        raise ApiError("Invalid 'metadata': at most 16 pairs, keys of at most 64 characters and string values of "
                       "at most 512.", param="metadata", code="invalid_value")  # fmt: skip
    file = runner.store.file(body["input_file_id"])
    if file is None:
        raise ApiError(f"No such File object: {body['input_file_id']}", status=404, param="input_file_id",
                       code="not_found")  # fmt: skip
    if file["purpose"] != "batch":
        raise ApiError(
            "The input file must be uploaded with purpose 'batch'.", param="input_file_id", code="invalid_value"
        )
    obj = await runner.create(file["id"], body["endpoint"], body["completion_window"], metadata)
    return web.json_response(obj)


def _valid_metadata(metadata: Any) -> bool:
    return (
        isinstance(metadata, dict)
        and len(metadata) <= 16
        and all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in metadata.items()
        )
    )


def _batch(request: web.Request) -> dict[str, Any]:
    batch_id = request.match_info["batch_id"]
    obj = _runner(request).get(batch_id)
    if obj is None:
        raise ApiError(f"No such Batch: {batch_id}", status=404, param="batch_id", code="not_found")
    return obj


async def retrieve_batch(request: web.Request) -> web.Response:
    return web.json_response(_batch(request))


async def list_batches(request: web.Request) -> web.Response:
    limit = _limit(request, 20, 100)
    return web.json_response(page(_runner(request).all(), request.query.get("after"), limit))


async def cancel_batch(request: web.Request) -> web.Response:
    obj = _batch(request)
    if obj["status"] in TERMINAL or obj["status"] == "finalizing":  # finalizing: its results are being written
        raise ApiError(f"Cannot cancel a batch with status '{obj['status']}'.", status=409, code="invalid_state")
    if obj["status"] != "cancelling":
        obj = _runner(request).cancel(obj)
    return web.json_response(obj)
