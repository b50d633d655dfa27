"""LLAMACPP prompt-KV reuse and continuous batching on the real library and the default GGUF.

Shared prefixes are evaluated once, chat turns evaluate only their new tokens, and concurrent streams
join one decoder; in each case the greedy answers are those computed without the reuse (or alone), up to a
near-tie of that reference (tests/greedy.py: a prefix taken from the cache, or one sequence against eight
in a decode call, computes in other shapes and may sum in another order).
The counters asserted on are the engine's ``stats``; speed is measured in benchmarks/, not here.
"""

from __future__ import annotations

import asyncio
import time

import pytest

pytest.importorskip("llama_cpp")

from infermux.configs import GenerationParams, InferenceConfig, ModelParams
from infermux.engines.llamacpp.engine import LlamaCppInferenceEngine
from infermux.models import gguf_path
from infermux.samples import read_samples
from infermux.types import Conversation
from tests.greedy import LLAMACPP_SLACK, assert_same_or_near_tie, llama_cpp_logprobs

pytestmark = pytest.mark.slow

N_CTX = 1024
SYSTEM = " ".join(
    f"Rule {i}: answer politely, in plain English, and mention the harbour of village number {i} when useful."
    for i in range(12)
)  # ~300 tokens shared by the prefix rows
QUESTIONS = [
    "What is the capital of France?",
    "Write a sentence about the number 7.",
    "Name three primary colors.",
    "Why is the sky blue?",
    "Give me a short tip for learning to cook.",
    "Write a haiku about the sea.",
]


def make_engine(slots: int) -> LlamaCppInferenceEngine:
    return LlamaCppInferenceEngine(
        ModelParams(model_name="smollm2-135m-instruct", model_kwargs={"n_ctx": N_CTX, "n_seq_max": slots}),
        generation_params=GenerationParams(max_new_tokens=24),
    )


def conv(messages: list[dict[str, str]]) -> Conversation:
    return Conversation.model_validate({"messages": messages})


def ask(text: str, system: str | None = None) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]


def infer(engine: LlamaCppInferenceEngine, convs: list[Conversation], **gen) -> list[str]:
    cfg = InferenceConfig(model=engine.model_params, generation=GenerationParams(**{"max_new_tokens": 24, **gen}))
    return [c.last_message.text for c in engine.infer(convs, cfg)]


@pytest.fixture(scope="module")
def raw():
    from llama_cpp import Llama

    from infermux.engines.llamacpp.cpu import model_defaults
    from infermux.engines.llamacpp.settings import llama_kwargs

    with model_defaults():  # as the engine loads it (AMX guard, llama_kwargs)
        llm = Llama(
            model_path=str(gguf_path()), **llama_kwargs({"n_ctx": N_CTX, "logits_all": True})
        )  # logprobs need all
    yield llm
    llm.close()


def raw_answer(llm, messages: list[dict[str, str]], max_tokens: int = 24) -> tuple[str, list]:
    """The library's greedy answer and its tokens' top-2 log-probabilities."""
    out = llm.create_chat_completion(
        messages, temperature=0.0, max_tokens=max_tokens, top_k=0, min_p=0.0, top_p=1.0, logprobs=True, top_logprobs=2
    )
    return out["choices"][0]["message"]["content"], llama_cpp_logprobs(out)


def assert_near(got: str, reference: tuple[str, list]) -> None:
    text, tokens = reference
    assert_same_or_near_tie(got, tokens, slack=LLAMACPP_SLACK, reference_text=text)


def test_shared_system_prompt_is_evaluated_once_and_answers_equal_the_library(raw):
    """Rows with the long system prompt, interleaved with rows without it, through 3 slots."""
    rows = [ask(q, SYSTEM) if i % 3 != 1 else ask(q) for i, q in enumerate(QUESTIONS * 2)]
    engine = make_engine(3)
    try:
        prompt_lengths = [len(engine.prompt_tokens(conv(m))) for m in rows]
        shared = len(engine.prompt_tokens(conv(ask("", SYSTEM)))) - 8
        got = infer(engine, [conv(m) for m in rows])
        evaluated = engine.stats["prompt_tokens_evaluated"]
    finally:
        engine.close()
    for answer, messages in zip(got, rows, strict=True):
        assert_near(answer, raw_answer(raw, messages))
    with_system = sum(1 for i in range(len(rows)) if i % 3 != 1)
    assert shared > 250
    # the system prompt is computed about once, not once per row that carries it
    assert evaluated <= sum(prompt_lengths) - (with_system - 1) * shared


def test_chat_turns_evaluate_only_the_new_tokens_and_answer_as_without_reuse():
    history = ask("My favourite colour is green and I live by the sea.", "You are a helpful assistant.")
    follow_ups = ["Suggest a name for my boat.", "Write a short poem about it."]
    engine, fresh = make_engine(2), make_engine(2)
    try:
        turn_prompts, evaluated = [], []
        for text in [None, *follow_ups]:
            if text is not None:
                history = [*history, {"role": "user", "content": text}]
            before = engine.stats["prompt_tokens_evaluated"]
            (answer,) = infer(engine, [conv(history)], max_new_tokens=32)
            evaluated.append(engine.stats["prompt_tokens_evaluated"] - before)
            turn_prompts.append(engine.prompt_tokens(conv(history)))
            history = [*history, {"role": "assistant", "content": answer}]
        third = conv(history[:-1])
        cfg = InferenceConfig(
            model=fresh.model_params, generation=GenerationParams(max_new_tokens=32, logprobs=True, top_logprobs=2)
        )
        [done] = fresh.infer([third], cfg)
        [sample] = read_samples(done)
        assert fresh.stats["prompt_tokens_evaluated"] == len(turn_prompts[2])
        assert_near(history[-1]["content"], (done.last_message.text, sample.logprobs))
    finally:
        engine.close()
        fresh.close()
    assert evaluated[0] == len(turn_prompts[0])
    # turn 3 evaluates the tokens after turn 2's prompt (turn 2's answer, the new question), not the history
    assert evaluated[2] <= len(turn_prompts[2]) - len(turn_prompts[1])
    assert evaluated[2] < len(turn_prompts[2]) / 2


def test_concurrent_streams_join_one_decoder_and_answer_as_alone():
    engine = make_engine(8)
    gen = GenerationParams(max_new_tokens=32)
    prompts = [conv(ask(q)) for q in [*QUESTIONS, "Tell me about owls.", "What is 12 times 12?"]]

    scored = GenerationParams(max_new_tokens=32, logprobs=True, top_logprobs=2)

    async def stream(c: Conversation, generation: GenerationParams = gen) -> Conversation:
        parts, final = [], None
        async for event in engine.astream(c, generation):
            if event.final:
                final = event.conversation
            else:
                parts.append(event.delta)
        assert final is not None and "".join(parts) == final.last_message.text
        return final

    async def together() -> list[str]:
        return [c.last_message.text for c in await asyncio.gather(*(stream(c) for c in prompts))]

    async def alone() -> list[Conversation]:  # with each token's two best choices
        return [await stream(c, scored) for c in prompts]

    try:
        concurrent = asyncio.run(together())
        assert engine.stats["max_active"] == 8  # all eight streams were decoded in the same steps
        for got, reference in zip(concurrent, asyncio.run(alone()), strict=True):
            [sample] = read_samples(reference)
            assert sample.logprobs and sample.text == reference.last_message.text
            assert_same_or_near_tie(got, sample.logprobs, slack=LLAMACPP_SLACK, reference_text=sample.text)
    finally:
        engine.close()


def test_a_stream_whose_consumer_leaves_frees_its_sequence():
    engine = make_engine(2)
    gen = GenerationParams(max_new_tokens=300)
    question = conv(ask("Write a very long story about a dragon and a lighthouse."))

    async def leave_early() -> int:
        pieces = 0
        stream = engine.astream(question, gen)
        async for _event in stream:
            pieces += 1
            if pieces == 3:
                break
        await stream.aclose()
        return pieces

    try:
        assert asyncio.run(leave_early()) == 3
        deadline = time.monotonic() + 60
        while engine.stats["active"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.stats["active"] == 0
        steps = engine.stats["steps"]
        assert steps < 100  # generation stopped long before the 300-token limit
        assert infer(engine, [conv(ask("Say hello."))], max_new_tokens=4)[0]
    finally:
        engine.close()


def test_chat_streams_reuse_the_answer_kv_and_answer_as_the_library_chat_loop(raw):
    """A streamed chat (``infermux chat``, ``serve`` with ``stream``) keeps each answer's KV: the next turn
    evaluates only its new message and markup. llama-cpp-python's own chat loop reuses its cache the same
    way, and the answers are equal to it turn by turn (up to a near-tie: the two caches split the history
    into other prefills)."""
    engine = make_engine(2)
    gen = GenerationParams(max_new_tokens=32)
    questions = [
        "My favourite colour is green and I live by the sea.",
        "Suggest a name for my boat.",
        "Write a short poem about it.",
    ]

    async def turn(messages: list[dict[str, str]]) -> str:
        final = None
        async for event in engine.astream(conv(messages), gen):
            if event.final:
                final = event.conversation
        assert final is not None
        return final.last_message.text

    try:
        ours: list[dict[str, str]] = [{"role": "system", "content": "You are a helpful assistant."}]
        library = list(ours)
        evaluated, prompts, answers = [], [], []
        raw.reset()
        for question in questions:
            ours.append({"role": "user", "content": question})
            library.append({"role": "user", "content": question})
            before = engine.stats["prompt_tokens_evaluated"]
            answer = asyncio.run(turn(ours))
            evaluated.append(engine.stats["prompt_tokens_evaluated"] - before)
            prompts.append(len(engine.prompt_tokens(conv(ours))))
            answers.append(len(engine._llama.tokenize(answer.encode(), add_bos=False, special=False)))
            assert_near(answer, raw_answer(raw, library, max_tokens=32))
            ours.append({"role": "assistant", "content": answer})
            library.append({"role": "assistant", "content": answer})
    finally:
        engine.close()
    assert evaluated[0] == prompts[0]
    # turns 2 and 3 evaluate their question and chat markup, not the previous answer (±2 tokens where the
    # answer's end is tokenized differently in the history than as it was generated)
    for k in (1, 2):
        assert evaluated[k] <= prompts[k] - prompts[k - 1] - answers[k - 1] + 2


def test_decode_steps_list_their_sequences_in_slot_order():
    """llama.cpp (one KV stream per sequence) makes one pass per run of consecutive slots in a call's
    order: prompts admitted in another order (here grouped by length: 6, 6, then 9 tokens) still decode
    in slot order, one run."""
    from infermux.engines.llamacpp.decode import SamplingSpec

    engine = make_engine(4)
    decoder = engine._decoder
    steps: list[list[int]] = []
    decode = decoder._decode

    def spy() -> None:
        batch = decoder._batch
        ids = [batch.seq_id[n][0] for n in range(batch.n_tokens)]
        if len(ids) == len(set(ids)) == len(decoder.active) > 1:  # a decode step: one token per sequence
            steps.append(ids)
        decode()

    decoder._decode = spy  # type: ignore[method-assign]
    word = [engine._llama.tokenize(w.encode(), add_bos=False)[0] for w in (" cat", " dog", " owl")]
    try:
        results = engine._scheduler.generate([[word[0]] * 6, [word[1]] * 9, [word[2]] * 6], 6, SamplingSpec())
    finally:
        engine.close()
    assert all(not isinstance(r, Exception) for r in results)
    assert steps and all(ids == sorted(ids) for ids in steps), steps
