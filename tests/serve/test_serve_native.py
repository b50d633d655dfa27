"""``infermux serve`` on NATIVE (transformers, float32): concurrent streaming SDK clients share one decode
batch (engines/native/scheduler.py) and each gets the answer it gets alone (up to a float32 near-tie of
the alone answer, tests/greedy.py: the batch's shape orders the sums); a client that leaves early does not
disturb the others; a request for n answers with log-probabilities joins the same batch (its seeded
samples are compared exactly)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.greedy import FLOAT32_SLACK, assert_same_or_near_tie
from tests.serve.running import Served, serve

openai = pytest.importorskip("openai")
pytest.importorskip("torch")
pytest.importorskip("transformers")

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
PROMPTS = [f"Write one short sentence about the number {i}." for i in range(8)]


async def ask(sdk: openai.AsyncOpenAI, prompt: str, max_tokens: int = 16) -> str:
    stream = await sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
    )
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


async def ask_scored(sdk: openai.AsyncOpenAI, prompt: str, max_tokens: int = 16) -> tuple[str, list[Any]]:
    """As :func:`ask`, with each token's two best choices: the text and its tokens."""
    stream = await sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0,
        logprobs=True, top_logprobs=2, stream=True,
    )  # fmt: skip
    texts: list[str] = []
    tokens: list[Any] = []
    async for chunk in stream:
        if chunk.choices:
            texts.append(chunk.choices[0].delta.content or "")
            if chunk.choices[0].logprobs:
                tokens.extend(chunk.choices[0].logprobs.content or [])
    return "".join(texts), tokens


async def choices(sdk: openai.AsyncOpenAI) -> list[tuple[str | None, list[float]]]:
    """Two seeded answers with log-probabilities, streamed (each choice arrives whole)."""
    stream = await sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Name a fruit."}], max_tokens=8, n=2, temperature=1.0,
        seed=5, logprobs=True, top_logprobs=2, stream=True,
    )  # fmt: skip
    found: dict[int, tuple[str | None, list[float]]] = {}
    async for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content is not None:
                content = choice.logprobs.content if choice.logprobs else None
                found[choice.index] = (choice.delta.content, [t.logprob for t in content or []])
    return [found[i] for i in sorted(found)]


async def scored_chunks(sdk: openai.AsyncOpenAI) -> list[tuple[str, list[bytes]]]:
    """One greedy answer with logprobs, streamed: each chunk's text and its tokens' bytes."""
    stream = await sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Name a fruit."}], max_tokens=8, temperature=0,
        logprobs=True, top_logprobs=2, stream=True,
    )  # fmt: skip
    return [
        (c.choices[0].delta.content or "", [bytes(t.bytes or []) for t in c.choices[0].logprobs.content or []])
        async for c in stream
        if c.choices and c.choices[0].logprobs
    ]


async def leave_early(sdk: openai.AsyncOpenAI) -> None:
    """Open a long stream and close it after the first text: the server drops that row."""
    stream = await sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a long story."}], max_tokens=24, stream=True
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    await stream.close()


def test_eight_concurrent_streaming_clients_answer_as_alone() -> None:
    with serve("--engine", "NATIVE", "--model.model_name", MODEL, "--model.torch_dtype_str", "float32") as served:

        async def run(server: Served) -> tuple[list[Any], list[Any], str, list[tuple[str, list[bytes]]]]:
            sdk = openai.AsyncOpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=900)
            try:
                alone = [await ask_scored(sdk, p) for p in PROMPTS] + [await choices(sdk)]
                together = await asyncio.gather(leave_early(sdk), *(ask(sdk, p) for p in PROMPTS), choices(sdk))
                after = await ask(sdk, PROMPTS[0])  # still serving, same answer
                return alone, list(together[1:]), after, await scored_chunks(sdk)
            finally:
                await sdk.close()

        alone, together, after, scored = asyncio.run(run(served))
        # n = 1 with logprobs streams token by token: each chunk carries the tokens behind its text
        assert len(scored) > 1 and all(b"".join(raw) == text.encode() for text, raw in scored)
        assert all(text and tokens for text, tokens in alone[:-1])
        assert len(alone[-1]) == 2 and all(text and logprobs for text, logprobs in alone[-1])
        for got, (want, tokens) in zip(together[:-1], alone[:-1], strict=True):
            assert "".join(t.token for t in tokens) == want
            assert_same_or_near_tie(got, tokens, slack=FLOAT32_SLACK, reference_text=want)
        assert [text for text, _ in together[-1]] == [text for text, _ in alone[-1]]
        for (_, got), (_, want) in zip(together[-1], alone[-1], strict=True):
            assert got == pytest.approx(want, abs=1e-4)  # float32: the batch's shape may move the last bits
        assert_same_or_near_tie(after, alone[0][1], slack=FLOAT32_SLACK, reference_text=alone[0][0])
        assert served.alive() and "Traceback" not in served.log()
