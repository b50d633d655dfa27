"""LLAMACPP: several samples per prompt and token log-probabilities, against llama.cpp's own logits."""

from __future__ import annotations

import json
from typing import Any

import pytest

pytest.importorskip("llama_cpp")

from infermux.configs import GenerationParams, InferenceConfig, ModelParams
from infermux.engines.llamacpp.engine import LlamaCppInferenceEngine
from infermux.models import gguf_path
from infermux.samples import read_samples
from infermux.types import Conversation
from tests.greedy import LLAMACPP_SLACK
from tests.logprob_bytes import SPLIT_PROMPT, SPLIT_TOKENS, assert_exact_bytes, assert_joins

pytestmark = pytest.mark.slow

N_CTX = 512
QUESTIONS = ["What is the capital of France?", "Name three primary colors."]


@pytest.fixture(scope="module")
def engine() -> Any:
    eng = LlamaCppInferenceEngine(
        ModelParams(model_name="smollm2-135m-instruct", model_kwargs={"n_ctx": N_CTX, "n_seq_max": 4})
    )
    yield eng
    eng.close()


def conv(text: str) -> Conversation:
    return Conversation.model_validate({"messages": [{"role": "user", "content": text}]})


def run(engine: LlamaCppInferenceEngine, **generation: Any) -> list[Conversation]:
    config = InferenceConfig(model=engine.model_params, generation=GenerationParams(**generation))
    out = engine.infer([conv(q) for q in QUESTIONS], config)
    assert all("error" not in c.metadata for c in out), [c.metadata for c in out]
    return out


def test_greedy_logprobs_equal_llama_cpp_logits(engine: LlamaCppInferenceEngine) -> None:
    import numpy as np
    from llama_cpp import Llama

    from infermux.engines.llamacpp.cpu import model_defaults
    from infermux.engines.llamacpp.settings import llama_kwargs

    out = run(engine, max_new_tokens=12, logprobs=True, top_logprobs=3)
    plain = run(engine, max_new_tokens=12)
    assert [c.last_message.text for c in out] == [c.last_message.text for c in plain]
    with model_defaults():  # as the engine loads it (AMX guard, llama_kwargs)
        raw = Llama(model_path=str(gguf_path()), **llama_kwargs({"n_ctx": N_CTX, "logits_all": True}))
    try:
        for question, row in zip(QUESTIONS, out, strict=True):
            [sample] = read_samples(row)
            assert sample.logprobs
            prompt = engine.prompt_tokens(conv(question))
            raw.reset()
            raw.eval(prompt)
            for entry in sample.logprobs:  # greedy decoding by hand on the library's logits
                logits = np.asarray(raw.scores[raw.n_tokens - 1], dtype=np.float64)
                expected = logits - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))
                token = int(np.argmax(expected))
                text = raw.detokenize([token], special=True).decode("utf-8", errors="replace")
                if entry.token != text:  # only where the library's two best were a near-tie (tests/greedy.py)
                    first, second = np.sort(expected)[-1], np.sort(expected)[-2]
                    assert first - second <= LLAMACPP_SLACK, f"{entry.token!r} where the library chose {text!r}"
                    break  # the answers are unrelated after a flip
                assert entry.logprob == pytest.approx(expected[token], abs=1e-3)
                top = np.argsort(-expected)[:3]
                assert [t.logprob for t in entry.top_logprobs] == pytest.approx(expected[top].tolist(), abs=1e-3)
                raw.eval([token])
            assert sample.usage is not None and sample.usage.completion_tokens == len(sample.logprobs)
    finally:
        raw.close()


def test_n_seeded_samples_are_distinct_and_reproducible(engine: LlamaCppInferenceEngine) -> None:
    settings = {"n": 4, "temperature": 1.0, "seed": 3, "max_new_tokens": 16}
    first = run(engine, **settings)
    again = run(engine, **settings)
    assert [c.metadata["samples"] for c in first] == [c.metadata["samples"] for c in again]
    single = run(engine, temperature=1.0, seed=3, max_new_tokens=16)
    for row, alone in zip(first, single, strict=True):
        samples = read_samples(row)
        assert len(samples) == 4 and len({s.text for s in samples}) > 1
        assert samples[0].text == alone.last_message.text == row.last_message.text
        usage = row.metadata["usage"]
        assert usage["completion_tokens"] == sum(s.usage.completion_tokens for s in samples if s.usage)


def test_logprobs_carry_each_tokens_bytes_through_the_output_file(engine: LlamaCppInferenceEngine) -> None:
    config = InferenceConfig(
        model=engine.model_params,
        generation=GenerationParams(max_new_tokens=SPLIT_TOKENS, logprobs=True, top_logprobs=3),
    )
    [row] = engine.infer([conv(SPLIT_PROMPT)], config)
    reread = Conversation.from_json_dict(json.loads(row.to_json()))  # as a job's output line stores it
    [sample] = read_samples(reread)
    assert sample.logprobs is not None
    assert_exact_bytes(sample.text, sample.logprobs)


def test_stream_carries_each_tokens_logprobs_with_its_text(engine: LlamaCppInferenceEngine) -> None:
    import asyncio

    generation = GenerationParams(max_new_tokens=SPLIT_TOKENS, logprobs=True, top_logprobs=2)

    async def collect() -> list[Any]:
        return [event async for event in engine.astream(conv(SPLIT_PROMPT), generation)]

    events = asyncio.run(collect())
    *pieces, final = events
    streamed = [t for e in pieces for t in e.logprobs or []]
    assert all(e.logprobs is not None for e in pieces) and len(pieces) > 3
    assert "".join(e.delta for e in pieces) == final.conversation.last_message.text
    assert_exact_bytes(final.conversation.last_message.text, streamed)
    [sample] = read_samples(final.conversation)  # the row keeps them too, as a job writes them
    assert sample.logprobs == streamed
    [row] = engine.infer([conv(SPLIT_PROMPT)], InferenceConfig(model=engine.model_params, generation=generation))
    assert [(t.token, t.bytes) for t in read_samples(row)[0].logprobs or []] == [(t.token, t.bytes) for t in streamed]


def test_an_answer_that_ends_lists_no_end_token(engine: LlamaCppInferenceEngine) -> None:
    config = InferenceConfig(model=engine.model_params, generation=GenerationParams(max_new_tokens=64, logprobs=True))
    [row] = engine.infer([conv("Say hello.")], config)
    [sample] = read_samples(row)
    assert row.metadata["finish_reason"] == "stop" and sample.logprobs
    assert_joins(sample.text, sample.logprobs)
