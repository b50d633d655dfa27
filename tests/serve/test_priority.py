"""Batch rows behind interactive requests: :class:`BatchLane` with :class:`Priority`, and the Batcher's
low-priority queue, on a recording engine (in process, fast)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from infermux.configs.generation_params import GenerationParams
from infermux.errors import RowError
from infermux.serve import priority as priority_module
from infermux.serve.batcher import Batcher
from infermux.serve.priority import BatchLane, Priority
from infermux.types import Conversation, Message, Role


def conv(text: str) -> Conversation:
    return Conversation(messages=[Message(role=Role.USER, content=text)])


class Recording:
    """Answers after ``delay`` seconds; records the calls and the most in flight at once."""

    def __init__(self, delay: float = 0.05) -> None:
        self.delay = delay
        self.calls: list[list[str]] = []
        self.in_flight = 0
        self.most = 0

    def check(self, generation: GenerationParams, *, conversation: Conversation | None = None) -> None:
        pass

    def chunk_size(self, generation: GenerationParams) -> int:
        return 8

    async def answer(self, conversations: list[Conversation], generation: GenerationParams) -> list[Any]:
        self.calls.append([c.last_message.text for c in conversations])
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        await asyncio.sleep(self.delay)
        self.in_flight -= 1
        return [c.replace(messages=[*c.messages, Message(role=Role.ASSISTANT, content="ok")]) for c in conversations]


def test_batch_rows_wait_for_waiting_requests_and_go_single_file_beside_live_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(priority_module, "GRACE", 0.3)

    async def go() -> None:
        engine, priority = Recording(), Priority()
        lane = BatchLane(engine, priority, None, width=4)  # type: ignore[arg-type]
        gen = GenerationParams()
        priority.arrived()  # an interactive request waits for its first token
        first = asyncio.create_task(lane.answer([conv("b0")], gen))
        await asyncio.sleep(0.1)
        assert engine.calls == []  # the batch row did not start
        priority.served()  # it is generating now: one batch row at a time
        rows = [asyncio.create_task(lane.answer([conv(f"b{i}")], gen)) for i in range(1, 4)]
        await asyncio.sleep(0.12)
        assert engine.most == 1 and 1 <= len(engine.calls) <= 3
        await asyncio.gather(first, *rows)
        priority.finished()  # the live request ended: single file for the grace period, then side by side
        more = [asyncio.create_task(lane.answer([conv(f"c{i}")], gen)) for i in range(2)]
        await asyncio.sleep(0.2)
        assert engine.most == 1
        await asyncio.sleep(0.2)
        more += [asyncio.create_task(lane.answer([conv(f"d{i}")], gen)) for i in range(4)]
        results = await asyncio.gather(first, *rows, *more)
        assert all(not isinstance(r[0], RowError) for r in results)
        assert engine.most > 1 and lane.max_concurrency() == 4 and lane.chunk_size(gen) == 1

    asyncio.run(go())


def test_the_batcher_serves_waiting_interactive_requests_before_batch_rows() -> None:
    async def go() -> None:
        engine = Recording(delay=0.02)
        engine.chunk_size = lambda generation: 1  # type: ignore[method-assign]
        batcher = Batcher(engine)  # type: ignore[arg-type]
        gen = GenerationParams()
        low = [asyncio.create_task(batcher.answer(conv(f"batch {i}"), gen, low=True)) for i in range(3)]
        high = asyncio.create_task(batcher.answer(conv("live"), gen))
        await asyncio.gather(*low, high)
        await batcher.close()
        order = [call[0] for call in engine.calls]
        assert order.index("live") == 0, order  # queued after three batch rows, answered first

    asyncio.run(go())
