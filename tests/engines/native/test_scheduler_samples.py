"""NATIVE streams asking for n answers or log-probabilities join the scheduler's batch (one row per answer),
on the real default model in float32: answers equal what the same request gets through ``infer`` alone
(a greedy one up to a float32 near-tie of the alone answer, tests/greedy.py: the batch's shape orders the
sums; sampled ones exactly, as a draw moves only where it lands within the rounding of a boundary)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from infermux.configs import GenerationParams, ModelParams
from infermux.engines.native.engine import NativeTextInferenceEngine
from infermux.samples import read_samples
from infermux.types import Conversation
from tests.greedy import FLOAT32_SLACK, assert_same_or_near_tie
from tests.logprob_bytes import SPLIT_PROMPT, SPLIT_TOKENS, assert_exact_bytes

pytestmark = pytest.mark.slow

END_OF_TURN = "2"  # <|im_end|> in SmolLM2's vocabulary
SAMPLED = GenerationParams(n=2, temperature=1.0, seed=7, max_new_tokens=10)
SCORED = GenerationParams(logprobs=True, top_logprobs=3, max_new_tokens=10)
PLAIN = GenerationParams(max_new_tokens=24, logit_bias={END_OF_TURN: -100.0})  # runs all 24 steps


@pytest.fixture(scope="module")
def engine() -> Iterator[NativeTextInferenceEngine]:
    built = NativeTextInferenceEngine(ModelParams(model_name="smollm2-135m-instruct"))
    yield built
    built.close()


def conv(text: str) -> Conversation:
    return Conversation.model_validate({"messages": [{"role": "user", "content": text}]})


async def final(engine: NativeTextInferenceEngine, text: str, generation: GenerationParams) -> Conversation:
    deltas: list[str] = []
    async for event in engine.astream(conv(text), generation):
        if event.final:
            assert event.conversation is not None
            assert "".join(deltas) == event.conversation.last_message.text
            return event.conversation
        deltas.append(event.delta)
    raise AssertionError("no final event")


def logprob_values(row: Conversation) -> list[list[Any]]:
    return [
        [(t.token, t.logprob, [(a.token, a.logprob) for a in t.top_logprobs]) for t in s.logprobs or []]
        for s in read_samples(row)
    ]


def test_samples_and_logprobs_share_steps_with_other_streams_and_answer_as_alone(
    engine: NativeTextInferenceEngine,
) -> None:
    # Today's non-scheduled path (the batch decode under the model lock) gives the reference answers.
    [sampled_alone] = engine.answer_blocking([conv("Name a fruit.")], SAMPLED)
    [scored_alone] = engine.answer_blocking([conv("What is the capital of France?")], SCORED)
    assert isinstance(sampled_alone, Conversation) and isinstance(scored_alone, Conversation)
    assert engine._scheduler is not None
    engine._scheduler.stats["max_rows"] = 0  # the most rows in one step, from here on
    before = dict(engine.stats)

    async def run() -> tuple[Conversation, Conversation]:
        first = asyncio.Event()

        async def plain(text: str) -> None:
            async for event in engine.astream(conv(text), PLAIN):
                first.set()
                if event.final:
                    return
            raise AssertionError("no final event")

        others = [asyncio.create_task(plain(t)) for t in ("Tell me a story.", "Describe the sea.")]
        await first.wait()  # both join a batch that is already decoding
        sampled, scored = await asyncio.gather(
            final(engine, "Name a fruit.", SAMPLED), final(engine, "What is the capital of France?", SCORED)
        )
        await asyncio.gather(*others)
        return sampled, scored

    sampled, scored = asyncio.run(run())
    stats = engine.stats
    assert stats["max_rows"] >= 4  # 2 plain rows + 2 sample rows (+ 1 scored row) in one step
    assert stats["joined_mid_decode"] - before["joined_mid_decode"] >= 3
    assert stats["active"] == 0

    assert sampled.metadata["samples"] == sampled_alone.metadata["samples"]
    assert len(read_samples(sampled)) == 2 and sampled.last_message.text == sampled_alone.last_message.text
    assert sampled.metadata["usage"] == sampled_alone.metadata["usage"]

    [answer], [reference] = read_samples(scored), read_samples(scored_alone)
    assert reference.logprobs is not None
    assert_same_or_near_tie(answer.text, reference.logprobs, slack=FLOAT32_SLACK, reference_text=reference.text)
    same = answer.text == reference.text
    if same:  # after a near-tie flip the two answers are unrelated
        assert scored.metadata["usage"] == scored_alone.metadata["usage"]
    got, want = logprob_values(scored), logprob_values(scored_alone)
    assert len(got[0]) > 0 and len(want[0]) > 0 and len(got[0][0][2]) == 3
    assert len(got[0]) == len(want[0]) or not same
    for (token, value, top), (token_alone, value_alone, top_alone) in zip(got[0], want[0], strict=same):
        if token != token_alone:
            break  # the near-tie flip checked above
        assert value == pytest.approx(value_alone, abs=1e-4)
        assert [t for t, _ in top] == [t for t, _ in top_alone]
        assert [v for _, v in top] == pytest.approx([v for _, v in top_alone], abs=1e-4)


def test_an_abandoned_n_stream_frees_all_its_rows(engine: NativeTextInferenceEngine) -> None:
    endless = GenerationParams(n=3, temperature=1.0, seed=3, max_new_tokens=24, logit_bias={END_OF_TURN: -100.0})
    before = dict(engine.stats)

    async def run() -> None:
        stream = engine.astream(conv("Tell me a long story."), endless)
        await anext(stream)  # the first answer's first text: all three rows are decoding
        await stream.aclose()  # the client went away
        for _ in range(500):
            if engine.stats["active"] == 0:
                return
            await asyncio.sleep(0.01)

    asyncio.run(run())
    stats = engine.stats
    assert stats["active"] == 0
    assert stats["cancelled"] - before["cancelled"] == 3
    assert 3 <= stats["generated_tokens"] - before["generated_tokens"] < 3 * 24


def test_streamed_logprobs_carry_each_tokens_bytes(engine: NativeTextInferenceEngine) -> None:
    generation = GenerationParams(logprobs=True, top_logprobs=3, max_new_tokens=SPLIT_TOKENS)
    [sample] = read_samples(asyncio.run(final(engine, SPLIT_PROMPT, generation)))
    assert sample.logprobs is not None
    assert_exact_bytes(sample.text, sample.logprobs)


def test_a_streamed_answer_sends_each_tokens_logprobs_with_its_text(engine: NativeTextInferenceEngine) -> None:
    """One answer with logprobs: every text delta carries the scores of the tokens behind it (serve sends
    them in that chunk, as OpenAI does); together they are the row's, and a part-character token waits
    for the rest of its character."""
    generation = GenerationParams(logprobs=True, top_logprobs=3, max_new_tokens=SPLIT_TOKENS)

    async def collect() -> list[Any]:
        return [event async for event in engine.astream(conv(SPLIT_PROMPT), generation)]

    *pieces, last = asyncio.run(collect())
    assert last.final and last.conversation is not None and len(pieces) > 3
    assert all(e.logprobs is not None for e in pieces)
    assert "".join(e.delta for e in pieces) == last.conversation.last_message.text
    for event in pieces:
        if event.delta:  # the tokens behind a delta are its text, byte for byte
            assert b"".join(bytes(t.bytes) for t in event.logprobs) == event.delta.encode("utf-8")
    streamed = [t for e in pieces for t in e.logprobs]
    [sample] = read_samples(last.conversation)
    assert sample.logprobs == streamed
    assert_exact_bytes(sample.text, streamed)
