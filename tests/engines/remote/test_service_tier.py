"""``generation.service_tier``: sent only to the APIs that take it, recorded from the reply, priced by tier.

The servers are the protocol fakes (OpenAI chat completions, Anthropic messages) on 127.0.0.1; they
reject a tier their reference does not list and report the tier that answered, as the APIs do.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from infermux.configs import GenerationParams, InferenceConfig, ModelParams, RemoteParams
from infermux.engines.registry import build_engine
from infermux.errors import ConfigError
from infermux.jobs.cost import pricing_for
from infermux.types import Conversation, Usage
from tests.fakes import FakeAnthropic, FakeOpenAIChat

KEY = "sk-tier-test-key-123456"


def _rows(n: int = 2) -> list[Conversation]:
    return [Conversation.model_validate({"messages": [{"role": "user", "content": f"hi {i}"}]}) for i in range(n)]


def _engine(engine: str, url: str, model: str, tier: str | None) -> object:
    return build_engine(
        InferenceConfig(
            model=ModelParams(model_name=model),
            engine=engine,
            generation=GenerationParams(max_new_tokens=8, service_tier=tier),
            remote_params=RemoteParams(api_url=url, api_key=KEY),
        )
    )


def test_openai_flex_goes_out_is_recorded_and_costs_half() -> None:
    with FakeOpenAIChat(api_key=KEY, model="gpt-4o-mini") as server:
        assert isinstance(server, FakeOpenAIChat)
        costs = {}
        for tier in (None, "flex"):
            server.clear()
            answered = _engine("OPENAI", server.url + "/v1", "gpt-4o-mini", tier).infer(_rows())  # type: ignore[attr-defined]
            bodies = [r.json for r in server.requests if r.path.endswith("/chat/completions")]
            assert [b.get("service_tier") for b in bodies] == [tier, tier]
            assert [a.metadata.get("service_tier") for a in answered] == ([None, None] if tier is None else [tier] * 2)
            costs[tier] = sum(a.metadata["cost_usd"] for a in answered)
        assert costs["flex"] == pytest.approx(costs[None] / 2)


def test_anthropic_takes_its_own_tiers() -> None:
    with FakeAnthropic(api_key=KEY) as server:
        assert isinstance(server, FakeAnthropic)
        engine = _engine("ANTHROPIC", server.url, "claude-sonnet-4-5", "standard_only")
        answered = engine.infer(_rows(1))  # type: ignore[attr-defined]
        assert server.requests[-1].json["service_tier"] == "standard_only"
        assert answered[0].metadata["service_tier"] == "standard"
        with pytest.raises(ConfigError, match="ANTHROPIC takes one of auto, standard_only"):
            _engine("ANTHROPIC", server.url, "claude-sonnet-4-5", "flex")


@pytest.mark.parametrize("engine", ["REMOTE", "REMOTE_VLLM", "TOGETHER", "GOOGLE_GEMINI"])
def test_an_engine_without_tiers_is_a_config_error(engine: str) -> None:
    with pytest.raises(ConfigError, match=f"service_tier='flex': {engine} takes no service tier"):
        _engine(engine, "http://127.0.0.1:9/v1", "m", "flex")


def test_openai_rejects_a_tier_it_does_not_have_also_for_reasoning_models() -> None:
    for model in ("gpt-4o-mini", "gpt-5-mini"):
        with pytest.raises(ConfigError, match="OPENAI takes one of auto, default, flex, priority"):
            _engine("OPENAI", "http://127.0.0.1:9/v1", model, "standard_only")


def test_the_cli_says_so_without_a_traceback(tmp_path: Path) -> None:
    rows = tmp_path / "in.jsonl"
    rows.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    done = subprocess.run(
        [sys.executable, "-m", "infermux", "infer", "--engine", "REMOTE", "--model.model_name", "m",
         "--remote_params.api_url", "http://127.0.0.1:9/v1", "--input_path", str(rows),
         "--output_path", str(tmp_path / "out.jsonl"), "--generation.service_tier", "flex"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert "takes no service tier" in done.stderr
    assert "Traceback" not in done.stderr


def test_prices_follow_the_tier_that_answered() -> None:
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000)
    standard = pricing_for("OPENAI", "gpt-4.1")
    flex = pricing_for("OPENAI", "gpt-4.1", "flex")
    priority = pricing_for("OPENAI", "gpt-4.1", "priority")
    assert standard is not None and flex is not None and priority is not None
    base = standard.cost(usage)
    assert base is not None
    assert flex.cost(usage) == pytest.approx(base / 2)
    # the price library's own priority rates: $3.50 in / $14 out per million for gpt-4.1 (1.75x)
    assert priority.cost(usage) == pytest.approx(base * 1.75)
    # asked for flex, answered on the default tier (flex capacity ran out): the default price
    assert flex.cost(usage, tier="default") == pytest.approx(base)
    assert pricing_for("OPENAI", "gpt-4.1", "auto").cost(usage) == pytest.approx(base)  # type: ignore[union-attr]
    # a batch is its own price, whatever tier was asked for
    assert flex.cost(usage, batch=True) == pytest.approx(standard.cost(usage, batch=True))
    # Anthropic's priority tier is sold by commitment: unknown, never guessed
    claude = pricing_for("ANTHROPIC", "claude-sonnet-4-5")
    assert claude is not None and claude.cost(usage, tier="priority") is None
    assert claude.cost(usage, tier="standard") == claude.cost(usage)
