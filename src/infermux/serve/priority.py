"""Interactive requests before batch rows: how a Batch API batch shares the served engine.

Batch rows reach the engine through a :class:`BatchLane`, which the job layer's loop drives like any
engine (:func:`infermux.jobs.loop.run_job`): one row per call and at most ``width`` rows at once
(``serve --batch-concurrency``), so the engine always has room beside them. Before each row starts, the
lane waits while any interactive request is waiting for its first token, and while interactive requests
are generating (and for :data:`GRACE` seconds after the last one ended: live traffic comes in runs) it
keeps a single batch row in flight (:class:`Priority`): a batch never takes the
engine's next free place from a live request, and still moves on under steady live traffic. On engines
served through the :class:`~infermux.serve.batcher.Batcher`, batch rows queue there as low-priority
requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

from infermux.errors import InfermuxError, RowError
from infermux.types import Conversation

if TYPE_CHECKING:
    from infermux.configs.generation_params import GenerationParams
    from infermux.engines.base import InferenceEngine
    from infermux.serve.batcher import Batcher

__all__ = ["GRACE", "BatchLane", "Priority"]

#: Seconds after the last interactive request ended during which batch rows still go one at a time.
GRACE = 1.0


class Priority:
    """Counts interactive requests: those waiting for their first token, and all those not finished."""

    def __init__(self) -> None:
        self.waiting = 0
        self.active = 0
        self.quiet_since = 0.0  # time.monotonic() when the last interactive request ended
        self._event = asyncio.Event()

    def changed(self) -> None:
        """Wake whatever waits in :meth:`until`."""
        self._event.set()
        self._event = asyncio.Event()

    def arrived(self) -> None:
        self.waiting += 1
        self.active += 1
        self.changed()

    def served(self) -> None:
        """The request got its first token (or ended without one)."""
        self.waiting = max(0, self.waiting - 1)
        self.changed()

    def finished(self) -> None:
        self.active = max(0, self.active - 1)
        self.quiet_since = time.monotonic()
        self.changed()

    def live(self) -> bool:
        """Interactive requests are running, or ran less than :data:`GRACE` seconds ago."""
        return self.active > 0 or time.monotonic() - self.quiet_since < GRACE

    async def until(self, ready: Callable[[], bool]) -> None:
        """Return once ``ready()`` holds (checked after each change, and when the grace period ends)."""
        while True:
            event = self._event
            if ready():
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), GRACE / 4)


class BatchLane:
    """The served engine as batch rows see it (duck-typed for :func:`~infermux.jobs.loop.run_job`)."""

    def __init__(self, engine: InferenceEngine, priority: Priority, batcher: Batcher | None, width: int) -> None:
        self.engine = engine
        self.priority = priority
        self.batcher = batcher
        self.width = max(1, width)
        self.busy = 0  # batch rows in flight

    def _may_start(self) -> bool:
        priority = self.priority
        return priority.waiting == 0 and (self.busy < 1 or not priority.live())

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
            await self.priority.until(self._may_start)
            self.busy += 1
            try:
                results.append(await self._one(conversation, generation))
            finally:
                self.busy -= 1
                self.priority.changed()
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
