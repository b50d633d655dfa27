"""Prompt caching by default, as Oumi does (issue 23, item 15), and cache counts read on every provider.

ANTHROPIC sends Anthropic's automatic caching (a top-level ``cache_control: {"type": "ephemeral"}``) unless
``remote_params.anthropic_prompt_caching`` is false; ``true`` keeps the explicit system/tools breakpoints.
Providers that cache on their own (OpenAI, DeepSeek, Gemini) need nothing sent; their cache reads are read
into ``usage.cached_tokens`` so the cost uses the cache price.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infermux.configs import GenerationParams, ModelParams, RemoteParams
from infermux.engines.remote.anthropic import AnthropicInferenceEngine
from infermux.jobs.cost import pricing_for
from infermux.types import Conversation, Message, Role, Usage
from tests.fakes import FakeAnthropic

KEY = "sk-ant-test"


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=KEY) as server:
        yield server


def engine(url: str, caching: bool | None = None) -> AnthropicInferenceEngine:
    remote = RemoteParams(api_url=url, api_key=KEY, num_workers=1, max_retries=0)
    if caching is not None:
        remote = remote.model_copy(update={"anthropic_prompt_caching": caching})
    return AnthropicInferenceEngine(
        ModelParams(model_name="claude-sonnet-4-5"), generation_params=GenerationParams(max_new_tokens=32),
        remote_params=remote,
    )  # fmt: skip


def turns(*texts: str) -> Conversation:
    roles = [Role.USER, Role.ASSISTANT]
    return Conversation(messages=[Message(role=roles[i % 2], content=t) for i, t in enumerate(texts)])


def test_automatic_caching_is_on_by_default_and_a_conversation_reads_its_earlier_turns(fake: FakeAnthropic) -> None:
    eng = engine(fake.url)
    [first] = eng.infer([turns("Read this long shared document please.")])
    [later] = eng.infer([turns("Read this long shared document please.", "Done.", "Now summarise it.")])
    bodies = [r.json for r in fake.requests]
    assert all(b["cache_control"] == {"type": "ephemeral"} for b in bodies)
    assert first.usage is not None and later.usage is not None
    assert first.usage.cache_creation_tokens == first.usage.prompt_tokens and not first.usage.cached_tokens
    assert later.usage.cached_tokens == first.usage.prompt_tokens  # the first turn, read back
    pricing = pricing_for("ANTHROPIC", "claude-sonnet-4-5")
    assert pricing is not None
    uncached = later.usage.model_copy(update={"cached_tokens": None, "cache_creation_tokens": None})
    assert (pricing.cost(later.usage) or 0) < (pricing.cost(uncached) or 0)


def test_the_switch_turns_caching_off(fake: FakeAnthropic) -> None:
    engine(fake.url, caching=False).infer([turns("hello there")])
    body = fake.requests[-1].json
    assert "cache_control" not in body and isinstance(body.get("system", ""), str)


def test_true_keeps_the_explicit_system_breakpoint(fake: FakeAnthropic) -> None:
    rows = [Conversation(messages=[Message(role=Role.SYSTEM, content="Shared rules " * 10),
                                   Message(role=Role.USER, content=f"q{i}")]) for i in range(2)]  # fmt: skip
    answers = engine(fake.url, caching=True).infer(rows)
    body = fake.requests[0].json
    assert "cache_control" not in body and body["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert answers[1].usage is not None and answers[1].usage.cached_tokens == 20


def test_deepseek_context_cache_hits_are_cached_tokens() -> None:
    usage = Usage.from_openai(
        {
            "prompt_tokens": 100,
            "completion_tokens": 5,
            "total_tokens": 105,
            "prompt_cache_hit_tokens": 80,
            "prompt_cache_miss_tokens": 20,
        }
    )
    assert usage == Usage.of(100, 5, 105, cached_tokens=80)
    openai = Usage.from_openai(
        {
            "prompt_tokens": 100,
            "completion_tokens": 5,
            "total_tokens": 105,
            "prompt_tokens_details": {"cached_tokens": 64},
        }
    )
    assert openai == Usage.of(100, 5, 105, cached_tokens=64)
