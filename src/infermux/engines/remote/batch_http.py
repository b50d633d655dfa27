"""What every HTTP batch client shares: the engine's transport settings, key and error reading, twice.

``transport`` retries as the engine does online; ``once`` never retries, for calls that are not
idempotent (creating a batch: a lost reply may hide a batch that exists).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from infermux.engines.batch_client import BatchClient
from infermux.engines.remote.http.transport import HttpRequest, Transport

if TYPE_CHECKING:
    from infermux.configs.generation_params import GenerationParams
    from infermux.engines.remote.base import RemoteEngine
    from infermux.types import Conversation

__all__ = ["HttpBatchClient", "jsonl_form"]


def jsonl_form(filename: str, lines: list[bytes], **fields: str) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body carrying ``fields`` and the JSONL file ``filename`` made of ``lines``,
    and its Content-Type."""
    boundary = f"infermux-{uuid.uuid4().hex}"
    head = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields.items()
    )
    head += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/jsonl\r\n\r\n"
    )
    body = head.encode() + b"".join(lines) + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class HttpBatchClient(BatchClient):
    """A :class:`BatchClient` over the HTTP transport of a :class:`RemoteEngine`."""

    #: The request headers of the provider's batch calls (set by each protocol: auth, version).
    headers: dict[str, str]

    def __init__(self, engine: RemoteEngine) -> None:
        engine.check_ready()
        self.engine = engine
        self.name = engine.name
        hint = f"Check the key in {engine.api_key_env} (or remote_params.api_key)." if engine.api_key_env else ""
        kwargs: dict[str, Any] = {
            "secrets": engine.secrets,
            "auth_hint": hint,
            "error_message": engine.error_message,
            "handler": engine.transport_handler,
        }
        self.transport: Transport[Any] = Transport(engine.settings, **kwargs)
        self.once: Transport[Any] = Transport(dataclasses.replace(engine.settings, max_retries=0), **kwargs)

    async def __aenter__(self) -> HttpBatchClient:
        await self.transport.__aenter__()
        await self.once.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.once.__aexit__(*exc)
        await self.transport.__aexit__(*exc)

    @staticmethod
    async def pages(
        fetch: Callable[[int, str], Awaitable[dict[str, Any]]], limit: int, size: int
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` items of a paged list (``data``, ``has_more``, ``last_id``: OpenAI's and
        Anthropic's shape): ``fetch(page_size, after_id)`` returns one page."""
        out: list[dict[str, Any]] = []
        after = ""
        while len(out) < limit:
            page = await fetch(min(size, limit - len(out)), after)
            out.extend(page.get("data") or [])
            if not page.get("has_more") or not page.get("data"):
                break
            after = str(page.get("last_id") or page["data"][-1]["id"])
        return out[:limit]

    @staticmethod
    async def token_pages(
        fetch: Callable[[int, str], Awaitable[dict[str, Any]]], key: str, limit: int, size: int
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` items of a paged list in Google's shape (the items under ``key``, then
        ``nextPageToken``): ``fetch(page_size, page_token)`` returns one page."""
        out: list[dict[str, Any]] = []
        token = ""
        while len(out) < limit:
            page = await fetch(min(size, limit - len(out)), token)
            out.extend(page.get(key) or [])
            token = str(page.get("nextPageToken") or "")
            if not token or not page.get(key):
                break
        return out[:limit]

    async def jsonl_records(self, url: str, records: dict[str, Any]) -> dict[str, Any]:
        """Download the JSONL results file at ``url`` into ``records`` (custom_id -> record); return it."""
        request = HttpRequest(url, b"", self.headers, "GET")
        for raw in (await self.transport.send(request, bytes, raw=True)).splitlines():
            if raw.strip():
                record = json.loads(raw)
                records[str(record.get("custom_id"))] = record
        return records

    def body(self, conversation: Conversation, generation: GenerationParams) -> dict[str, Any]:
        """The body the engine would send online for this row (less ``service_tier``: a batch API is its
        own tier)."""
        body = self.engine.build_body(conversation, generation)
        body.pop("service_tier", None)
        return body

    def parse(self, conversation: Conversation, reply: Any) -> Conversation:
        """The row answered from a reply body of the online endpoint's shape."""
        return self.engine.parse_reply(conversation, reply)
