"""Streamed answers over HTTP: server-sent events framing, and the decoder seam protocols implement.

A protocol that can stream gives :class:`~infermux.engines.remote.base.RemoteEngine` two things:
``build_stream_request`` (the request with its ``stream`` flag set) and ``stream_decoder`` (a
:class:`StreamDecoder` that turns each :class:`SseEvent` into a text delta and, at the end, the answered
conversation). The transport (:meth:`Transport.stream`) opens the request, retrying failures that
happen before the answer starts, and yields the events.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from infermux.types import Conversation

__all__ = ["SseEvent", "StreamDecoder", "iter_sse"]


@dataclass(frozen=True)
class SseEvent:
    """One server-sent event: its ``data`` (lines joined by newlines) and ``event`` name."""

    data: str
    event: str = "message"


class StreamDecoder(Protocol):
    """Turns a protocol's events into text deltas and the final answer."""

    #: True once the protocol's end-of-stream marker has been seen (the transport stops reading).
    done: bool

    def feed(self, event: SseEvent) -> str:
        """The text the event adds (may be empty). Raise ``ValueError`` on a malformed event and
        :class:`~infermux.errors.RemoteError` on an error the server reports inside the stream."""
        ...

    def result(self) -> Conversation:
        """The conversation answered with everything streamed so far, with usage metadata."""
        ...


async def iter_sse(lines: AsyncIterable[bytes]) -> AsyncIterator[SseEvent]:
    """Parse a ``text/event-stream`` body given as lines (aiohttp's ``response.content`` yields them).

    Follows the HTML standard's framing: ``field: value`` lines, ``data`` lines accumulated, an empty
    line dispatches the event, lines starting with ``:`` are comments; ``id`` and ``retry`` are ignored.
    """
    data: list[str] = []
    event = ""
    async for raw in lines:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data:
                yield SseEvent("\n".join(data), event or "message")
            data, event = [], ""
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    if data:  # a stream that ends without the final blank line
        yield SseEvent("\n".join(data), event or "message")
