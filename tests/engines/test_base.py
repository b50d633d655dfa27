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


class _Recording(InferenceEngine):
    """Answers each row with its text upper-cased and notes what reached it; ``fail``/``leave_out`` misbehave."""

    engine_type = "RECORDING"
    fail = False
    leave_out = False

    def setup(self) -> None:
        self.seen: list[list[str]] = []

    async def _infer_chunk(self, conversations, generation):  # type: ignore[no-untyped-def]
        self.seen.append([c.messages[-1].text for c in conversations])
        if self.fail:
            raise ValueError("the engine broke")
        answers = [c.with_reply(c.messages[-1].text.upper()) for c in conversations]
        return [None, *answers[1:]] if self.leave_out else answers


def _rows(*texts: str | None) -> list[Conversation]:
    # None: a row without messages, which the engine's check refuses before it runs
    return [Conversation.model_validate({"messages": [{"role": "user", "content": t}] if t else []}) for t in texts]


def _answer(engine: InferenceEngine, rows: list[Conversation]) -> list:  # type: ignore[type-arg]
    return asyncio.run(engine.answer(rows, engine.generation_params))


def _summary(results: list) -> list[str]:  # type: ignore[type-arg]
    return [r.messages[-1].text if isinstance(r, Conversation) else f"{r.kind}: {r.message[:23]}" for r in results]


def test_answer_keeps_row_order_and_refused_rows_never_reach_the_engine() -> None:
    engine = _Recording(ModelParams(model_name="m"))
    assert _summary(_answer(engine, _rows("a", None, "b"))) == ["A", "invalid_input: the conversation has no", "B"]
    assert _summary(_answer(engine, _rows(None))) == ["invalid_input: the conversation has no"]
    assert _summary(_answer(engine, _rows("c"))) == ["C"]
    assert _answer(engine, []) == []
    assert engine.seen == [["a", "b"], ["c"]]  # the refused rows and the empty call sent nothing


def test_a_chunk_wide_failure_is_each_running_rows_error_and_a_missing_answer_is_named() -> None:
    engine = _Recording(ModelParams(model_name="m"))
    engine.fail = True
    assert _summary(_answer(engine, _rows("a", None, "b"))) == [
        "generation_failed: the engine broke", "invalid_input: the conversation has no", "generation_failed: the engine broke",
    ]  # fmt: skip
    assert _summary(_answer(engine, _rows("a"))) == ["generation_failed: the engine broke"]
    engine.fail, engine.leave_out = False, True
    assert _summary(_answer(engine, _rows("a", "b"))) == ["internal: no result", "B"]
    assert _summary(_answer(engine, _rows("a", None))) == [
        "internal: no result",
        "invalid_input: the conversation has no",
    ]
