"""NATIVE: several samples per prompt and token log-probabilities, against raw transformers."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from infermux.configs import GenerationParams, InferenceConfig, ModelParams  # noqa: E402
from infermux.engines.native.engine import NativeTextInferenceEngine  # noqa: E402
from infermux.models import hf_folder  # noqa: E402
from infermux.samples import read_samples  # noqa: E402
from infermux.types import Conversation  # noqa: E402
from tests.greedy import FLOAT32_SLACK  # noqa: E402
from tests.logprob_bytes import SPLIT_PROMPT, SPLIT_TOKENS, assert_exact_bytes, assert_joins  # noqa: E402

pytestmark = pytest.mark.slow

QUESTIONS = ["What is the capital of France?", "Name three colours of the rainbow, please."]
MODEL = ModelParams(model_name="smollm2-135m-instruct")


@pytest.fixture(scope="module")
def engine() -> NativeTextInferenceEngine:
    return NativeTextInferenceEngine(MODEL)


def conv(text: str) -> Conversation:
    return Conversation.model_validate({"messages": [{"role": "user", "content": text}]})


def run(engine: NativeTextInferenceEngine, questions: list[str], **generation: Any) -> list[Conversation]:
    config = InferenceConfig(model=MODEL, generation=GenerationParams(**generation))
    out = engine.infer([conv(q) for q in questions], config)
    assert all("error" not in c.metadata for c in out), [c.metadata for c in out]
    return out


def test_greedy_logprobs_equal_raw_generate_scores(engine: NativeTextInferenceEngine) -> None:
    out = run(engine, QUESTIONS, max_new_tokens=12, logprobs=True, top_logprobs=3, batch_size=2)
    folder = hf_folder()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    for question, row in zip(QUESTIONS, out, strict=True):
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                             tokenize=False)  # fmt: skip
        batch = tokenizer([text], return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            raw = model.generate(**batch, do_sample=False, max_new_tokens=12, output_scores=True,
                                 return_dict_in_generate=True, temperature=None, top_p=None, top_k=None)  # fmt: skip
        new = raw.sequences[0, batch["input_ids"].shape[1] :].tolist()
        if new and new[-1] == tokenizer.eos_token_id:  # the end of turn is not listed (as in OpenAI's API)
            new = new[:-1]
        [sample] = read_samples(row)
        assert sample.logprobs is not None
        # The engine ran the rows two by two, the library one alone: other shapes, the same answer up to a
        # float32 near-tie (tests/greedy.py), after which the two are unrelated.
        flipped = False
        for step, (token, entry) in enumerate(zip(new, sample.logprobs, strict=False)):  # compared below
            expected = torch.log_softmax(raw.scores[step][0].float(), dim=-1)
            values, ids = torch.topk(expected, 3)
            if entry.token != tokenizer.decode([token]):
                assert float(values[0] - values[1]) <= FLOAT32_SLACK and entry.token == tokenizer.decode([ids[1]])
                flipped = True
                break
            assert entry.logprob == pytest.approx(float(expected[token]), abs=1e-3)
            assert [t.logprob for t in entry.top_logprobs] == pytest.approx(values.tolist(), abs=1e-3)
            alternatives = [tokenizer.decode([i]) for i in ids.tolist()]
            for k, alt in enumerate(entry.top_logprobs):  # two alternatives within rounding may swap places
                tied = [
                    a
                    for a, v in zip(alternatives, values.tolist(), strict=True)
                    if abs(v - float(values[k])) <= FLOAT32_SLACK
                ]
                assert alt.token in tied, f"step {step}: alternative {alt.token!r}, the library's {alternatives}"
        if not flipped:
            assert len(sample.logprobs) == len(new)
            assert row.last_message.text == tokenizer.decode(new, skip_special_tokens=True)


def test_n_seeded_samples_are_distinct_and_reproducible(engine: NativeTextInferenceEngine) -> None:
    settings = {"n": 4, "temperature": 1.0, "seed": 11, "max_new_tokens": 16}
    first = run(engine, QUESTIONS, **settings)
    again = run(engine, QUESTIONS, **settings)
    assert [c.metadata["samples"] for c in first] == [c.metadata["samples"] for c in again]
    for row in first:
        samples = read_samples(row)
        assert len(samples) == 4 and len({s.text for s in samples}) > 1
        assert row.last_message.text == samples[0].text
        assert all(s.usage is not None and s.usage.completion_tokens for s in samples)
        usage = row.metadata["usage"]
        assert usage["completion_tokens"] == sum(s.usage.completion_tokens for s in samples if s.usage)
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_plain_answers_carry_no_samples(engine: NativeTextInferenceEngine) -> None:
    [row] = run(engine, QUESTIONS[:1], max_new_tokens=4)
    assert "samples" not in row.metadata


def test_logprobs_carry_each_tokens_bytes(engine: NativeTextInferenceEngine) -> None:
    [row] = run(engine, [SPLIT_PROMPT], max_new_tokens=SPLIT_TOKENS, logprobs=True, top_logprobs=3)
    [sample] = read_samples(row)
    assert sample.logprobs is not None
    assert_exact_bytes(sample.text, sample.logprobs)


def test_an_answer_that_ends_lists_no_end_token(engine: NativeTextInferenceEngine) -> None:
    [row] = run(engine, ["Say hello."], max_new_tokens=64, logprobs=True)
    [sample] = read_samples(row)
    assert row.metadata["finish_reason"] == "stop" and sample.logprobs
    assert_joins(sample.text, sample.logprobs)
