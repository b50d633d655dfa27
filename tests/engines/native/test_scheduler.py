"""Concurrent NATIVE streams decode in one batch (engines/native/scheduler.py), on the real default model.

float32 (the ModelParams default): each stream's answer must equal the answer it gets alone, whatever
joins or leaves the batch around it, up to a float32 near-tie of the alone answer (tests/greedy.py: the
batch's shape orders the sums). Sampled rows are compared exactly: a draw changes only where it lands within
the rounding of a boundary of the cumulative distribution, and no top-2 gap can stand for that.
"""

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

pytestmark = pytest.mark.slow

END_OF_TURN = "2"  # <|im_end|> in SmolLM2's vocabulary
PROMPTS = [
    "Say hello.",
    "Name three colours.",
    "What is two plus two?",
    "Write a sentence about the number 7.",
    "What is the capital of France?",
    "Name a fruit.",
    "Why is the sky blue? Answer briefly.",
    "Count: 1, 2, 3,",
]
# Rows with different settings share the decode steps, each with its own processors and stops.
SETTINGS: list[dict[str, Any]] = [
    {},
    {"stop_strings": [","]},
    {"frequency_penalty": 0.8},
    {"temperature": 0.8, "seed": 11},
    {"max_new_tokens": 6},
    {"logit_bias": {END_OF_TURN: -100.0}},
    {"presence_penalty": 0.5, "stop_token_ids": [30]},
    {"temperature": 0.7, "top_p": 0.9, "seed": 5},
]


@pytest.fixture(scope="module")
def engine() -> Iterator[NativeTextInferenceEngine]:
    built = NativeTextInferenceEngine(ModelParams(model_name="smollm2-135m-instruct"))
    yield built
    built.close()


def conv(text: str) -> Conversation:
    return Conversation.model_validate({"messages": [{"role": "user", "content": text}]})


def generation(i: int, **extra: Any) -> GenerationParams:
    return GenerationParams(**{"max_new_tokens": 16, **SETTINGS[i], **extra})


def alone_scored(engine: NativeTextInferenceEngine, i: int) -> tuple[str, int, list[Any]]:
    """Prompt ``i`` streamed alone with its tokens' top-2 log-probabilities (after its processors: what
    greedy chose from): the text, the token count and the tokens."""
    texts: list[str] = []
    final: Any = None

    async def run() -> None:
        nonlocal final
        async for event in engine.astream(conv(PROMPTS[i]), generation(i, logprobs=True, top_logprobs=2)):
            if event.final:
                final = event
            else:
                texts.append(event.delta)

    asyncio.run(run())
    assert final is not None and final.conversation is not None
    text = final.conversation.last_message.text
    assert "".join(texts) == text
    [sample] = read_samples(final.conversation)
    assert sample.logprobs is not None
    return text, final.metadata["usage"]["completion_tokens"], sample.logprobs


def assert_as_alone(got: list[tuple[str, int]], alone: list[tuple[str, int, list[Any]]], rows: list[int]) -> None:
    """Each stream's (text, tokens) equals its alone answer; a greedy row may differ at a float32 near-tie
    (and then in its token count: the answers are unrelated after it)."""
    for i, (text, count), (want, want_count, entries) in zip(rows, got, alone, strict=True):
        if "temperature" in SETTINGS[i]:
            assert (text, count) == (want, want_count), f"prompt {i} (sampled)"
            continue
        assert_same_or_near_tie(text, entries, slack=FLOAT32_SLACK, reference_text=want)
        assert count == want_count or text != want, f"prompt {i}"


async def stream(
    engine: NativeTextInferenceEngine, i: int, started: asyncio.Event | None = None, wait: asyncio.Event | None = None
) -> tuple[str, int]:
    """Stream prompt ``i`` (after ``wait``); set ``started`` at its first delta; the text and token count."""
    if wait is not None:
        await wait.wait()
    deltas: list[str] = []
    async for event in engine.astream(conv(PROMPTS[i]), generation(i)):
        if event.final:
            assert event.conversation is not None
            assert "".join(deltas) == event.conversation.last_message.text
            return event.conversation.last_message.text, event.metadata["usage"]["completion_tokens"]
        deltas.append(event.delta)
        if started is not None:
            started.set()
    raise AssertionError("no final event")


def test_concurrent_streams_join_mid_decode_and_answer_as_alone(engine: NativeTextInferenceEngine) -> None:
    alone = [alone_scored(engine, i) for i in range(len(PROMPTS))]
    assert engine._scheduler is not None
    engine._scheduler.max_rows = 4  # the rest wait for a free row
    before = dict(engine.stats)

    async def together() -> list[tuple[str, int]]:
        # Each stream starts once the previous one is producing text: it joins a batch mid-decode.
        started = [asyncio.Event() for _ in PROMPTS]
        tasks = [stream(engine, i, started[i], started[i - 1] if i else None) for i in range(len(PROMPTS))]
        return list(await asyncio.gather(*tasks))

    try:
        got = asyncio.run(together())
        assert_as_alone(got, alone, list(range(len(PROMPTS))))
    finally:
        engine._scheduler.max_rows = 32
    stats = engine.stats
    assert 1 < stats["max_rows"] <= 4
    assert stats["joined_mid_decode"] - before["joined_mid_decode"] >= 1
    assert stats["generated_tokens"] - before["generated_tokens"] == sum(n for _, n in got)
    assert stats["active"] == 0


def test_a_cancelled_stream_frees_its_row_and_the_others_finish(engine: NativeTextInferenceEngine) -> None:
    """A stream that cannot end on its own (end of turn banned, 24 tokens) is cancelled after its first
    text, as `infermux serve` does when a client disconnects: it leaves the batch, the others answer as alone."""
    others = [0, 2, 5]
    alone = [alone_scored(engine, i) for i in others]
    endless = GenerationParams(max_new_tokens=24, logit_bias={END_OF_TURN: -100.0})
    before = dict(engine.stats)

    async def run() -> list[tuple[str, int]]:
        first = asyncio.Event()

        async def doomed() -> None:
            async for event in engine.astream(conv("Tell me a long story."), endless):
                if event.delta:
                    first.set()
            raise AssertionError("the cancelled stream finished")

        victim = asyncio.create_task(doomed())
        tasks = [asyncio.create_task(stream(engine, i)) for i in others]
        await first.wait()
        victim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await victim
        return list(await asyncio.gather(*tasks))

    got = asyncio.run(run())
    assert_as_alone(got, alone, others)
    stats = engine.stats
    assert stats["cancelled"] - before["cancelled"] == 1
    assert stats["active"] == 0
    doomed_tokens = stats["generated_tokens"] - before["generated_tokens"] - sum(n for _, n in got)
    assert 1 <= doomed_tokens < 24  # it left the batch early, and was not left running


def test_a_request_cancelled_while_waiting_for_a_row_leaves_at_once(engine: NativeTextInferenceEngine) -> None:
    """One row only: B waits behind A; cancelling B takes it out of the queue while A still decodes."""
    scheduler = engine._scheduler
    assert scheduler is not None
    endless = GenerationParams(max_new_tokens=24, logit_bias={END_OF_TURN: -100.0})
    before = dict(engine.stats)

    async def run() -> None:
        first = asyncio.Event()

        async def consume(text: str) -> int:
            async for event in engine.astream(conv(text), endless):
                first.set()
                if event.final:
                    return int(event.metadata["usage"]["completion_tokens"])
            raise AssertionError("no final event")

        a = asyncio.create_task(consume("Tell me a long story."))
        await first.wait()
        b = asyncio.create_task(consume("Say hello."))
        while not scheduler._inbox:  # B is queued behind A
            await asyncio.sleep(0.01)
        b.cancel()
        with pytest.raises(asyncio.CancelledError):
            await b
        while scheduler._inbox:
            await asyncio.sleep(0.01)
        assert not a.done()  # B left the queue before A's row was free
        assert await a == 24

    scheduler.max_rows = 1
    try:
        asyncio.run(run())
    finally:
        scheduler.max_rows = 32
    assert engine.stats["cancelled"] - before["cancelled"] == 1
    assert engine.stats["admitted"] - before["admitted"] == 1  # B never took a row
