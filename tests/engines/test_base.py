"""StreamEvent: the typed usage of a final event; an engine written against the earlier seam still streams."""

import asyncio

from infermux.configs import ModelParams
from infermux.engines.base import InferenceEngine, StreamEvent
from infermux.types import Conversation, Usage


def test_stream_event_usage() -> None:
    reply = Conversation.model_validate({"messages": [{"role": "user", "content": "hi"}]}).with_reply(
        "a", usage=Usage.of(2, 3)
    )
    final = StreamEvent(conversation=reply, metadata=dict(reply.metadata))
    assert final.usage == Usage.of(2, 3)
    assert StreamEvent(delta="x").usage is None


class _OldSeamEngine(InferenceEngine):
    """A plugin written before ``_stream``: it overrode ``astream``."""

    engine_type = "OLD_SEAM"

    async def _infer_chunk(self, conversations, generation):  # type: ignore[no-untyped-def]
        return [c.with_reply("whole") for c in conversations]

    async def astream(self, conversation, generation=None):  # type: ignore[no-untyped-def,override]
        yield StreamEvent(delta="pie")
        yield StreamEvent(delta="ces")
        reply = conversation.with_reply("pieces")
        yield StreamEvent(conversation=reply, metadata=dict(reply.metadata))


def test_an_engine_that_overrode_astream_streams_through_the_entry_points() -> None:
    engine = _OldSeamEngine(ModelParams(model_name="m"))
    conversation = Conversation.model_validate({"messages": [{"role": "user", "content": "hi"}]})

    async def collect(method: str) -> list[str]:
        return [e.delta async for e in getattr(engine, method)(conversation) if e.delta]

    assert asyncio.run(collect("stream")) == asyncio.run(collect("astream")) == ["pie", "ces"]
    assert _OldSeamEngine.streams_itself()


class _CutEngine(InferenceEngine):
    """A plugin whose stream stops after some text, with no final answer."""

    engine_type = "CUT"

    async def _stream(self, conversation, generation):  # type: ignore[no-untyped-def,override]
        yield StreamEvent(delta="The answer is 4")


def test_a_stream_without_its_final_answer_is_an_error_not_a_short_answer() -> None:
    import pytest

    engine = _CutEngine(ModelParams(model_name="m"))
    conversation = Conversation.model_validate({"messages": [{"role": "user", "content": "2+2?"}]})

    async def collect() -> list[StreamEvent]:
        return [e async for e in engine.stream(conversation)]

    with pytest.raises(RuntimeError, match="ended without its final answer"):
        asyncio.run(collect())
