"""Interactive requests before batch rows: how a Batch API batch shares the served engine.

Batch rows reach the engine through a :class:`BatchLane`, which the job layer's loop drives like any
engine (:func:`infermux.jobs.loop.run_job`): one row per call and at most ``width`` rows at once
(``serve --batch-concurrency``), so the engine always has room beside them. Before each row starts, the
lane waits while any interactive request is waiting for its first token (:class:`Priority`): a batch
never takes the engine's next free place from a live request. On engines served through the
:class:`~infermux.serve.batcher.Batcher`, batch rows queue there as low-priority requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

from infermux.errors import InfermuxError, RowError
from infermux.types import Conversation

if TYPE_CHECKING:
    from infermux.configs.generation_params import GenerationParams
    from infermux.engines.base import InferenceEngine
    from infermux.serve.batcher import Batcher

__all__ = ["BatchLane", "Priority"]


class Priority:
    """Counts interactive requests waiting for their first token; batch rows wait for none to be."""

    def __init__(self) -> None:
        self.waiting = 0
        self._clear = asyncio.Event()
        self._clear.set()

    def arrived(self) -> None:
        self.waiting += 1
        self._clear.clear()

    def served(self) -> None:
        """The request got its first token (or ended without one)."""
        self.waiting = max(0, self.waiting - 1)
        if self.waiting == 0:
            self._clear.set()

    async def turn(self) -> None:
        """Return when no interactive request is waiting."""
        while not self._clear.is_set():
            await self._clear.wait()


class BatchLane:
    """The served engine as batch rows see it (duck-typed for :func:`~infermux.jobs.loop.run_job`)."""

    def __init__(self, engine: InferenceEngine, priority: Priority, batcher: Batcher | None, width: int) -> None:
        self.engine = engine
        self.priority = priority
        self.batcher = batcher
        self.width = max(1, width)

    def chunk_size(self, generation: GenerationParams) -> int:
        return 1  # a row at a time: each one waits its turn behind interactive requests

    def max_concurrency(self) -> int:
        return self.width

    @classmethod
    def yields_rows(cls) -> bool:
        return False

    def session(self) -> AbstractAsyncContextManager[None]:
        return self.engine.session()

    async def answer_each(
        self, conversations: list[Conversation], generation: GenerationParams
    ) -> AsyncIterator[tuple[int, Conversation | RowError]]:  # pragma: no cover - yields_rows() is False
        for pair in enumerate(await self.answer(conversations, generation)):
            yield pair

    async def answer(
        self, conversations: list[Conversation], generation: GenerationParams
    ) -> list[Conversation | RowError]:
        results: list[Conversation | RowError] = []
        for conversation in conversations:
            await self.priority.turn()
            results.append(await self._one(conversation, generation))
        return results

    async def _one(self, conversation: Conversation, generation: GenerationParams) -> Conversation | RowError:
        try:
            if self.batcher is not None:  # it checks the row as the interactive route does
                return await self.batcher.answer(conversation, generation, low=True)
            # the interactive route's check (settings the engine cannot honour, a row it cannot run)
            await asyncio.to_thread(self.engine.check, generation, conversation=conversation)
        except InfermuxError as exc:
            return RowError.from_exception(exc)
        (result,) = await self.engine.answer([conversation], generation)
        return result
