"""Concurrent requests gathered into one engine call, for local engines that cannot stream themselves.

An engine that does not stream itself answers one conversation per ``engine.stream`` call; on a local
engine that takes one chunk at a time (``max_concurrency() == 1``) concurrent calls would run one after
another, or race on one model (LLAMACPP, NATIVE and VLLM stream themselves). The :class:`Batcher`
queues requests and, whenever the engine is free, hands every waiting request with the same generation
settings to one ``engine.answer`` call (up to ``chunk_size``), so requests that arrive while a batch
runs join the next one. Requests whose client went away before their batch starts are dropped; a batch
already running finishes. Rows of a Batch API batch queue with ``low=True``: the next engine call takes
the waiting interactive requests first.

A request is checked as ``engine.stream`` checks it (``engine.check`` with the conversation) before it
is queued: a row the engine cannot run fails with the same :class:`~infermux.errors.InputError`.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from infermux.configs.generation_params import GenerationParams
from infermux.engines.base import InferenceEngine
from infermux.errors import RowError
from infermux.types import Conversation

__all__ = ["Batcher", "needs_batcher"]


def needs_batcher(engine: InferenceEngine) -> bool:
    """Whether concurrent requests on ``engine`` should go through a :class:`Batcher`."""
    return not engine.streams_itself() and engine.max_concurrency() == 1


@dataclass
class _Pending:
    conversation: Conversation
    generation: GenerationParams
    low: bool = False
    future: asyncio.Future[Conversation | RowError] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Batcher:
    def __init__(self, engine: InferenceEngine) -> None:
        self.engine = engine
        self._queue: list[_Pending] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def answer(
        self, conversation: Conversation, generation: GenerationParams, *, low: bool = False
    ) -> Conversation | RowError:
        """The answer to one request, or its error; raises what ``engine.check`` raises for it. ``low``: a
        batch row, served after the interactive requests waiting."""
        await asyncio.to_thread(self.engine.check, generation, conversation=conversation)  # off the event loop
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        pending = _Pending(conversation, generation, low)
        self._queue.append(pending)
        self._wake.set()
        return await pending.future

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(0.005)  # let requests that arrive together join one batch
            while self._queue:
                live = sorted((p for p in self._queue if not p.future.done()), key=lambda p: p.low)  # stable
                key = live[0].generation.model_dump_json() if live else ""
                limit = self.engine.chunk_size(live[0].generation) if live else 0
                batch = [p for p in live if p.generation.model_dump_json() == key][:limit]
                taken = {id(p) for p in batch}
                self._queue = [p for p in live if id(p) not in taken]
                if batch:
                    await self._answer(batch)

    async def _answer(self, batch: list[_Pending]) -> None:
        try:
            results = await self.engine.answer([p.conversation for p in batch], batch[0].generation)
        except Exception as exc:  # answer() turns the engine's errors into rows: this is a last resort
            results = [RowError.from_exception(exc)] * len(batch)
        for pending, result in zip(batch, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)
