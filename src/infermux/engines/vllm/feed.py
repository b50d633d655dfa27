"""Feeding vLLM continuously: one thread owns the ``LLM`` and steps its engine while chunks come and go.

``LLM.chat`` schedules one call's prompts together but returns only when the last of them ends, so a job
cut into chunks would idle vLLM's batch at every chunk's tail. Here the job loop keeps several small
chunks in flight (``chunk_size`` x ``max_concurrency`` rows); each chunk's conversations join the running
engine at its next step (``LLM.enqueue_chat``), and a chunk's results are handed back as soon as its own
rows have finished, while the others keep decoding. Rows in vLLM stay bounded, whatever the job's size.

A single conversation can also be fed as a stream (:meth:`Feeder.stream`): it joins the running engine
the same way, but its request reports every step's new text (vLLM's ``DELTA`` output kind), which the
thread hands to the consumer's callback; :meth:`Feeder.abort` removes it from vLLM at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Feeder", "Stream", "rejected_input"]

logger = logging.getLogger("infermux.engines.vllm")


@dataclass
class _Chunk:
    conversations: list[Any]  # the chats, as vLLM takes them
    params: Any
    enqueue: Callable[[Any, list[Any], Any], list[str]]
    done: Callable[[list[Any]], None]  # called (in the feeder thread) with one output or exception per row
    outputs: list[Any] = field(default_factory=list)
    pending: dict[str, int] = field(default_factory=dict)  # vLLM request id -> row
    each: Callable[[int, Any], None] | None = None  # called (in the feeder thread) as each row's output is final

    def settle(self, row: int, output: Any) -> None:
        self.outputs[row] = output
        if self.each is not None:
            self.each(row, output)


@dataclass
class Stream:
    """One streamed request: ``push`` gets (in the feeder thread) each step's output, or an exception."""

    chat: Any
    params: Any
    enqueue: Callable[[Any, list[Any], Any], list[str]]
    push: Callable[[Any], None]
    request_id: str = ""  # vLLM's internal id, once added


@dataclass
class _Abort:
    stream: Stream


def rejected_input(exc: BaseException) -> bool:
    """Whether vLLM refused a request for its input (too long, bad parameters): a ``ValueError``, or since
    vLLM 0.2x its own client errors, which are not ``ValueError``s."""
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:
        return isinstance(exc, ValueError)
    return isinstance(exc, (ValueError, VLLMClientError))


def _key(request_id: str) -> str:
    """The id ``LLM`` gave a request (a counter): vLLM's engine adds a suffix to the ids it returns on
    adding a request, while its outputs carry the id it was given."""
    return request_id.partition("-")[0]


class Feeder:
    """Steps ``llm``'s engine in one thread; :meth:`run` adds a chunk and awaits its rows' outputs.

    ``run``'s ``enqueue(llm, chats, params)`` adds requests and returns their ids (``LLM.enqueue_chat`` with the
    engine's template and LoRA); a chunk vLLM rejects as a whole is added row by row, so only the bad rows
    fail (their exception is their output).

    Not a :class:`~infermux.engines.local.decoder_thread.DecoderThread`: vLLM's engine, not this thread, holds
    the running requests and decides each step's batch, so the thread only hands over what arrived
    (chunks, streams, aborts, in order) and steps; a closed feeder fails what is in flight instead of
    refusing new requests, and a cancel is an explicit ``abort`` message rather than a flag read later.
    """

    def __init__(self, llm: Any) -> None:
        self._llm = llm
        self._inbox: queue.Queue[_Chunk | Stream | _Abort | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def run(
        self,
        conversations: list[Any],
        params: Any,
        enqueue: Callable[[Any, list[Any], Any], list[str]],
        each: Callable[[int, Any], None] | None = None,
    ) -> list[Any]:
        """Add the chunk and await every row's output; ``each(row, output)`` is called (in the event loop)
        as each row ends, before the chunk's last."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()

        def done(outputs: list[Any]) -> None:
            def settle() -> None:
                if not future.done():
                    future.set_result(outputs)

            with contextlib.suppress(RuntimeError):  # the event loop may be closed after a cancel
                loop.call_soon_threadsafe(settle)

        def row_done(row: int, output: Any) -> None:
            if each is not None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(each, row, output)

        self._start()
        self._inbox.put(_Chunk(conversations, params, enqueue, done, each=row_done))
        return await future

    def stream(
        self, chat: Any, params: Any, enqueue: Callable[[Any, list[Any], Any], list[str]], push: Callable[[Any], None]
    ) -> Stream:
        """Add ``chat`` as a streamed request; ``push`` gets each step's ``RequestOutput`` (the new text only)
        until the finished one, or the exception that ended it. Returns the handle :meth:`abort` takes."""
        stream = Stream(chat, params, enqueue, push)
        self._start()
        self._inbox.put(stream)
        return stream

    def abort(self, stream: Stream) -> None:
        """Take ``stream``'s request out of vLLM before its next step (its consumer went away)."""
        self._inbox.put(_Abort(stream))

    def close(self) -> None:
        if self._thread is not None:
            self._inbox.put(None)
            self._thread.join(timeout=60)
            self._thread = None

    # ------------------------------------------------------------------ the feeder thread
    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="infermux-vllm-feeder", daemon=True)
                self._thread.start()

    def _add(self, chunk: _Chunk) -> None:
        chunk.outputs = [None] * len(chunk.conversations)
        try:
            ids = chunk.enqueue(self._llm, chunk.conversations, chunk.params)
            chunk.pending = {_key(rid): row for row, rid in enumerate(ids)}
        except Exception:
            if len(chunk.conversations) > 1:
                logger.warning("vLLM rejected a chunk of %d rows; adding them one at a time.", len(chunk.conversations))
            for row, conversation in enumerate(chunk.conversations):
                try:
                    (rid,) = chunk.enqueue(self._llm, [conversation], chunk.params)
                    chunk.pending[_key(rid)] = row
                except Exception as exc:  # this row's input (too long, ...)
                    chunk.settle(row, exc)

    def _add_stream(self, stream: Stream, streams: dict[str, Stream]) -> None:
        try:
            (stream.request_id,) = stream.enqueue(self._llm, [stream.chat], stream.params)
        except Exception as exc:  # its input (too long, ...)
            stream.push(exc)
            return
        _report_deltas(self._llm.llm_engine, stream.request_id)
        streams[_key(stream.request_id)] = stream

    def _abort(self, stream: Stream, streams: dict[str, Stream]) -> None:
        key = _key(stream.request_id)
        if stream.request_id and streams.get(key) is stream:
            del streams[key]
            try:
                self._llm.llm_engine.abort_request([stream.request_id], internal=True)
            except Exception:  # the request may have ended meanwhile: the feeder keeps running
                logger.warning("vLLM could not abort request %s", stream.request_id, exc_info=True)

    def _loop(self) -> None:
        engine = self._llm.llm_engine
        live: dict[str, _Chunk] = {}
        streams: dict[str, Stream] = {}
        while True:
            try:  # take everything that arrived; wait for something only when vLLM has nothing to do
                item = self._inbox.get(block=not (live or streams))
                while True:
                    if item is None:
                        self._fail(live, streams, RuntimeError("the VLLM engine was closed"))
                        return
                    if isinstance(item, Stream):
                        self._add_stream(item, streams)
                    elif isinstance(item, _Abort):
                        self._abort(item.stream, streams)
                    else:
                        self._add(item)
                        live.update(dict.fromkeys(item.pending, item))
                        if not item.pending:
                            item.done(item.outputs)
                    item = self._inbox.get_nowait()
            except queue.Empty:
                pass
            if not (live or streams):
                continue
            try:
                step = engine.step()
            except Exception as exc:  # the engine itself failed: every row in it fails
                logger.exception("vLLM engine step failed")
                self._fail(live, streams, exc)
                continue
            for output in step:
                key = _key(output.request_id)
                if key in streams:
                    stream = streams.pop(key) if output.finished else streams[key]
                    stream.push(output)
                    continue
                chunk = live.pop(key, None) if output.finished else None
                if chunk is None:
                    continue
                chunk.settle(chunk.pending.pop(key), output)
                if not chunk.pending:
                    chunk.done(chunk.outputs)
            if (live or streams) and not engine.has_unfinished_requests():  # never spin on rows vLLM no longer has
                self._fail(live, streams, RuntimeError("vLLM ended without answering this row"))

    @staticmethod
    def _fail(live: dict[str, _Chunk], streams: dict[str, Stream], exc: BaseException) -> None:
        for chunk in {id(c): c for c in live.values()}.values():
            for row in chunk.pending.values():
                chunk.settle(row, exc)
            chunk.pending.clear()
            chunk.done(chunk.outputs)
        for stream in streams.values():
            stream.push(exc)
        live.clear()
        streams.clear()


def _report_deltas(engine: Any, request_id: str) -> None:
    """Have vLLM report ``request_id``'s new text at every step (``RequestOutputKind.DELTA``).

    ``LLM`` adds every request as ``FINAL_ONLY`` (one output at the end); the request's state in the
    engine's output processor is switched before its first step. Where this vLLM keeps no such state,
    the stream still ends with its whole answer, in one piece.
    """
    from vllm.sampling_params import RequestOutputKind

    state = getattr(getattr(engine, "output_processor", None), "request_states", {}).get(request_id)
    if state is not None and hasattr(state, "output_kind"):
        state.output_kind = RequestOutputKind.DELTA
    else:
        logger.warning("this vLLM cannot report text per step: streams arrive whole")
