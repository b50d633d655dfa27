"""The lines of a Batch API input file, checked as OpenAI checks them, and the lines of its results.

An input line is ``{"custom_id": str, "method": "POST", "url": "/v1/chat/completions", "body": {...}}``
(the body a chat-completions request would have). A line that is not JSON, lacks a field, repeats a
``custom_id``, uses another method or a url other than the batch's endpoint, or names another model fails
the whole batch at validation: the Batch object's ``errors`` list each such line (``line`` is 1-based).
A body the chat-completions route would refuse (a bad parameter) fails only its own request, in the
error file, with the status and error the route would answer.

Result lines: ``{"id": "batch_req_...", "custom_id", "response": {"status_code", "request_id", "body"},
"error"}``; a request never run (batch cancelled or expired) has ``response: null`` and ``error``
``{"code": "batch_cancelled" | "batch_expired", "message"}``. Ids are derived from the batch id and the
``custom_id``, so results written again after a restart are the same.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infermux.serve.batch_store import MAX_REQUESTS

__all__ = ["Line", "failure_line", "missing_line", "read_lines", "success_line"]

_FIELDS = ("custom_id", "method", "url", "body")
_MAX_ERRORS = 100  # lines reported in a failed batch's ``errors``


@dataclass(frozen=True)
class Line:
    number: int  # 1-based, counting blank lines
    custom_id: str
    body: dict[str, Any]


def _error(code: str, message: str, line: int | None = None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def read_lines(path: Path, endpoint: str, served_model: str) -> tuple[list[Line], list[dict[str, Any]]]:
    """The requests of an input file, and the validation errors that fail its batch (empty when none)."""
    lines: list[Line] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            if len(errors) >= _MAX_ERRORS:
                break
            problem = _check(raw, number, endpoint, served_model, seen)
            if isinstance(problem, Line):
                lines.append(problem)
            else:
                errors.append(problem)
    if not lines and not errors:
        errors.append(_error("empty_file", "The input file has no requests."))
    if len(lines) > MAX_REQUESTS:
        errors.append(
            _error("too_many_requests", f"The input file has {len(lines)} requests; a batch may have {MAX_REQUESTS}.")
        )
    return lines, errors


def _check(raw: bytes, number: int, endpoint: str, served_model: str, seen: set[str]) -> Line | dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return _error("invalid_json_line", f"Line {number} is not valid JSON.", number)
    if not isinstance(data, dict):
        return _error("invalid_request", f"Line {number} is not a JSON object.", number)
    missing = [name for name in _FIELDS if name not in data]
    if missing:
        return _error("missing_required_parameter", f"Line {number} has no '{missing[0]}'.", number, missing[0])
    extra = sorted(set(data) - set(_FIELDS))
    if extra:
        return _error("invalid_request", f"Line {number} has an unknown field '{extra[0]}'.", number, extra[0])
    custom_id, method, url, body = (data[name] for name in _FIELDS)
    if not isinstance(custom_id, str) or not custom_id:
        return _error("invalid_custom_id", f"Line {number}: custom_id must be a non-empty string.", number, "custom_id")
    if custom_id in seen:
        return _error(
            "duplicate_custom_id",
            f"Line {number}: the custom_id '{custom_id}' is used by an earlier line; each request needs its own.",
            number,
            "custom_id",
        )
    seen.add(custom_id)
    if method != "POST":
        return _error("invalid_method", f"Line {number}: method must be 'POST' (got {method!r}).", number, "method")
    if url != endpoint:
        return _error(
            "mismatched_endpoint",
            f"Line {number}: url {url!r} does not match the batch's endpoint {endpoint!r}.",
            number,
            "url",
        )
    if not isinstance(body, dict):
        return _error("invalid_request", f"Line {number}: body must be a JSON object.", number, "body")
    model = body.get("model")
    if model != served_model:
        return _error(
            "model_not_found",
            f"Line {number}: the model {model!r} is not served here; this server serves '{served_model}'.",
            number,
            "body.model",
        )
    return Line(number, custom_id, body)


def _ids(batch_id: str, custom_id: str) -> tuple[str, str]:
    digest = hashlib.sha256(f"{batch_id}\0{custom_id}".encode("utf-8", "surrogatepass")).hexdigest()
    return f"batch_req_{digest[:24]}", f"req_{digest[24:48]}"


def success_line(batch_id: str, custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
    rid, request_id = _ids(batch_id, custom_id)
    response = {"status_code": 200, "request_id": request_id, "body": body}
    return {"id": rid, "custom_id": custom_id, "response": response, "error": None}


def failure_line(batch_id: str, custom_id: str, status: int, error: dict[str, Any]) -> dict[str, Any]:
    """A request that was run and answered with an error (``error``: OpenAI's error body)."""
    rid, request_id = _ids(batch_id, custom_id)
    response = {"status_code": status, "request_id": request_id, "body": error}
    return {"id": rid, "custom_id": custom_id, "response": response, "error": None}


def missing_line(batch_id: str, custom_id: str, code: str, message: str) -> dict[str, Any]:
    """A request never run (``batch_cancelled``, ``batch_expired``)."""
    rid, _ = _ids(batch_id, custom_id)
    return {"id": rid, "custom_id": custom_id, "response": None, "error": {"code": code, "message": message}}
