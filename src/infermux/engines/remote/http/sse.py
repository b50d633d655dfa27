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

__all__ = ["MAX_LINE_BYTES", "WHOLE_REPLY", "SseEvent", "StreamDecoder", "iter_lines", "iter_sse"]

#: The longest line of a stream infermux reads (one ``data:`` line carries a whole event: a long answer
#: or a large tool call can come in one). Set here, not left to aiohttp, whose own line limit differs
#: between versions (128 KiB in 3.13, 512 KiB in 3.14) and would end such an answer with ``LineTooLong``.
MAX_LINE_BYTES = 64 * 2**20

#: The ``event`` name the transport gives a reply that came back as one JSON document although a stream
#: was asked for (a server that ignores ``stream: true``): the engine parses it as a whole answer.
WHOLE_REPLY = "infermux.whole-reply"


@dataclass(frozen=True)
class SseEvent:
    """One server-sent event: its ``data`` (lines joined by newlines) and ``event`` name."""

    data: str
    event: str = "message"


class StreamDecoder(Protocol):
    """Turns a protocol's events into text deltas and the final answer."""

    #: True once the protocol's end-of-stream marker has been seen (the transport stops reading).
    done: bool

    @property
    def finished(self) -> bool:
        """Whether the stream said the answer is whole: its end marker or a finish reason arrived. A
        stream that ends without either broke off (the engine reports an error, never a short answer)."""
        ...

    def feed(self, event: SseEvent) -> str:
        """The text the event adds (may be empty). Raise ``ValueError`` on a malformed event and
        :class:`~infermux.errors.RemoteError` on an error the server reports inside the stream."""
        ...

    def result(self) -> Conversation:
        """The conversation answered with everything streamed so far, with usage metadata."""
        ...


async def iter_lines(chunks: AsyncIterable[bytes], max_line: int = MAX_LINE_BYTES) -> AsyncIterator[bytes]:
    """The lines (each with its line break) of a body that arrives as ``chunks`` of any size, such as
    aiohttp's ``response.content.iter_any()``. A line longer than ``max_line`` bytes raises ``ValueError``."""
    pending = bytearray()
    async for chunk in chunks:
        pending += chunk
        start = 0
        while (end := pending.find(b"\n", start)) != -1:
            yield bytes(pending[start : end + 1])
            start = end + 1
        del pending[:start]
        if len(pending) > max_line:
            raise ValueError(f"a line of the stream is longer than {max_line} bytes")
    if pending:
        yield bytes(pending)


async def iter_sse(lines: AsyncIterable[bytes]) -> AsyncIterator[SseEvent]:
    """Parse a ``text/event-stream`` body given as lines (:func:`iter_lines` makes them).

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
