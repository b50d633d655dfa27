"""Fake of Anthropic's Message Batches API next to its Messages API (:class:`FakeAnthropic`).

Written from the Message Batches API reference:

* ``POST /v1/messages/batches`` with ``{"requests": [{"custom_id", "params"}]}`` (1 to 100,000 requests;
  ``custom_id`` matches ``^[a-zA-Z0-9_-]{1,64}$`` and is unique in the batch; ``params`` is a Messages
  request body, without ``stream``). Answers a ``message_batch`` object: ``id`` (``msgbatch_...``),
  ``type``, ``processing_status`` (``in_progress`` | ``canceling`` | ``ended``), ``request_counts``
  (``processing``, ``succeeded``, ``errored``, ``canceled``, ``expired``), ``created_at``,
  ``expires_at``, ``ended_at``, ``cancel_initiated_at``, ``archived_at``, ``results_url`` (null until
  the batch ended).
* ``GET /v1/messages/batches/{id}``: the batch (polling); ``POST /v1/messages/batches/{id}/cancel``:
  ``canceling``, then ended with the requests not yet processed ``canceled``; ``DELETE`` of an ended
  batch; ``GET /v1/messages/batches?limit=&after_id=&before_id=``: most recent first, ``{"data",
  "has_more", "first_id", "last_id"}`` (limit 1-1000, default 20).
* ``GET /v1/messages/batches/{id}/results``: JSON Lines, one ``{"custom_id", "result"}`` per request, in
  no particular order (this fake answers in reverse); ``result.type`` is ``succeeded`` (with
  ``message``), ``errored`` (with ``error: {"type": "error", "error": {"type", "message"}}``),
  ``canceled`` or ``expired``. Asking before the batch ended is an error.

Processing is scripted: a batch ends at the ``polls_to_end``-th retrieval; ``outcomes`` maps a request's
``custom_id`` to ``"expired"``, ``"errored"`` (an ``api_error``, worth retrying), ``"invalid"`` (errored
with ``invalid_request_error``, not worth retrying) or ``"canceled"``; invalid ``params`` also end as
``errored`` with ``invalid_request_error``, as the API validates each request only when it processes it.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ._server import Handler, RequestInvalid, apply_stops, check_keys, check_type, truncate_words
from .anthropic import FakeAnthropic

_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_COUNTS = ("processing", "succeeded", "errored", "canceled", "expired")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass
class _Batch:
    id: str
    requests: list[dict[str, Any]]
    created_at: str = field(default_factory=_now)
    status: str = "in_progress"
    polls: int = 0
    ended_at: str | None = None
    cancel_initiated_at: str | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)


class FakeAnthropicBatches(FakeAnthropic):
    def __init__(self, *args: Any, polls_to_end: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.polls_to_end = polls_to_end
        self.outcomes: dict[str, str] = {}
        self.batches: dict[str, _Batch] = {}
        self._ids = itertools.count(1)

    def routes(self) -> list[tuple[str, str, Handler]]:
        base = "/v1/messages/batches"
        return [
            *super().routes(),
            ("POST", base, self._create),
            ("GET", base, self._list),
            ("GET", base + "/{id}", self._retrieve),
            ("GET", base + "/{id}/results", self._results),
            ("POST", base + "/{id}/cancel", self._cancel),
            ("DELETE", base + "/{id}", self._delete),
        ]

    # ------------------------------------------------------------------ helpers
    def _auth(self, request: web.Request) -> web.Response | None:
        key = request.headers.get("x-api-key")
        if key != self.api_key:
            return self._error(401, "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return self._error(400, "anthropic-version: header is required")
        return None

    def _batch(self, request: web.Request) -> _Batch | web.Response:
        batch = self.batches.get(request.match_info["id"])
        return batch if batch is not None else self._error(404, f"no message batch {request.match_info['id']!r}")

    def _object(self, batch: _Batch) -> dict[str, Any]:
        counts = dict.fromkeys(_COUNTS, 0)
        if batch.status == "ended":
            for result in batch.results.values():
                counts[result["type"]] += 1
        else:
            counts["processing"] = len(batch.requests)
        ended = batch.status == "ended"
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": batch.status,
            "request_counts": counts,
            "created_at": batch.created_at,
            "expires_at": batch.created_at,
            "ended_at": batch.ended_at,
            "cancel_initiated_at": batch.cancel_initiated_at,
            "archived_at": None,
            "results_url": f"{self.url}/v1/messages/batches/{batch.id}/results" if ended else None,
        }

    def _process(self, batch: _Batch, canceled: bool = False) -> None:
        for item in batch.requests:
            custom_id, params = item["custom_id"], item["params"]
            outcome = "canceled" if canceled else self.outcomes.get(custom_id, "succeeded")
            if outcome == "succeeded":
                try:
                    result = {"type": "succeeded", "message": self._answer(params, custom_id)}
                except RequestInvalid as exc:
                    error = {"type": "invalid_request_error", "message": str(exc)}
                    result = {"type": "errored", "error": {"type": "error", "error": error}}
            elif outcome == "invalid":
                error = {"type": "invalid_request_error", "message": "max_tokens: too large (scripted)"}
                result = {"type": "errored", "error": {"type": "error", "error": error}}
            elif outcome == "errored":
                error = {"type": "api_error", "message": "Internal server error (scripted)"}
                result = {"type": "errored", "error": {"type": "error", "error": error}}
            else:
                result = {"type": outcome}
            batch.results[custom_id] = result
        batch.status, batch.ended_at = "ended", _now()

    def _answer(self, params: dict[str, Any], custom_id: str) -> dict[str, Any]:
        if "stream" in params:
            raise RequestInvalid("stream: not supported in message batches")
        exchange = self._validate(params)
        text = self.responder(exchange)
        text, matched = apply_stops(text, params.get("stop_sequences"))
        text, truncated = truncate_words(text, params["max_tokens"])
        stop_reason = "stop_sequence" if matched else ("max_tokens" if truncated else "end_turn")
        input_tokens = sum(len(t.split()) for _, t in exchange.turns) + len((exchange.system or "").split())
        usage = self._cache_usage(params, exchange, input_tokens)
        return {
            "id": f"msg_batch_{custom_id}", "type": "message", "role": "assistant", "model": params["model"],
            "content": [{"type": "text", "text": text}], "stop_reason": stop_reason, "stop_sequence": matched,
            "usage": {**usage, "output_tokens": len(text.split())},
        }  # fmt: skip

    # ------------------------------------------------------------------ routes
    async def _create(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        try:
            body = json.loads(await request.read())
            check_keys(body, "body", {"requests"}, {"requests"})
            requests = check_type(body["requests"], "requests", list)
            if not 1 <= len(requests) <= 100_000:
                raise RequestInvalid("requests: between 1 and 100000 requests are allowed")
            seen: set[str] = set()
            for i, item in enumerate(requests):
                check_keys(item, f"requests.{i}", {"custom_id", "params"}, {"custom_id", "params"})
                custom_id = check_type(item["custom_id"], f"requests.{i}.custom_id", str)
                if not _CUSTOM_ID.match(custom_id):
                    raise RequestInvalid(f"requests.{i}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$")
                if custom_id in seen:
                    raise RequestInvalid(f"requests.{i}.custom_id: duplicate custom_id {custom_id!r}")
                seen.add(custom_id)
                check_type(item["params"], f"requests.{i}.params", dict)
        except ValueError as exc:
            return self._error(400, f"There was an issue with your request body: {exc}")
        except RequestInvalid as exc:
            return self._error(exc.status, str(exc))
        batch = _Batch(f"msgbatch_{next(self._ids):06d}", requests)
        self.batches[batch.id] = batch
        return web.json_response(self._object(batch))

    async def _retrieve(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        batch = self._batch(request)
        if isinstance(batch, web.Response):
            return batch
        batch.polls += 1
        if batch.status == "canceling":
            self._process(batch, canceled=True)
        elif batch.status == "in_progress" and batch.polls >= self.polls_to_end:
            self._process(batch)
        return web.json_response(self._object(batch))

    async def _results(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        batch = self._batch(request)
        if isinstance(batch, web.Response):
            return batch
        if batch.status != "ended":
            return self._error(404, f"results of {batch.id} are not available until it ended")
        lines = [json.dumps({"custom_id": cid, "result": r}) for cid, r in reversed(batch.results.items())]
        return web.Response(body="\n".join(lines) + "\n", content_type="application/binary")

    async def _cancel(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        batch = self._batch(request)
        if isinstance(batch, web.Response):
            return batch
        if batch.status == "in_progress":
            batch.status, batch.cancel_initiated_at = "canceling", _now()
        return web.json_response(self._object(batch))

    async def _delete(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        batch = self._batch(request)
        if isinstance(batch, web.Response):
            return batch
        if batch.status != "ended":
            return self._error(400, "a batch can be deleted only once it ended; cancel it first")
        del self.batches[batch.id]
        return web.json_response({"id": batch.id, "type": "message_batch_deleted"})

    async def _list(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            return self._error(400, "limit: must be an integer")
        if not 1 <= limit <= 1000:
            return self._error(400, "limit: must be between 1 and 1000")
        ordered = sorted(self.batches.values(), key=lambda b: b.id, reverse=True)  # most recent first
        after, before = request.query.get("after_id"), request.query.get("before_id")
        if after:
            ordered = [b for b in ordered if b.id < after]
        if before:
            ordered = [b for b in ordered if b.id > before][-limit:]
        page = ordered[:limit]
        return web.json_response(
            {
                "data": [self._object(b) for b in page],
                "has_more": len(ordered) > limit,
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
            }
        )
