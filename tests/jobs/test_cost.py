"""Costs come from genai-prices' own tables: the same figures as calling the library directly."""

from __future__ import annotations

import pytest

pytest.importorskip("genai_prices")

from genai_prices import Usage, calc_price

from infermux.jobs.cost import CostTotals, pricing_for


def test_known_model_matches_the_library() -> None:
    pricing = pricing_for("OPENAI", "gpt-4o-mini")
    assert pricing is not None
    usage = {"prompt_tokens": 12_000, "completion_tokens": 3_000, "total_tokens": 15_000}
    expected = calc_price(Usage(input_tokens=12_000, output_tokens=3_000), "gpt-4o-mini", provider_id="openai")
    assert pricing.cost(usage) == pytest.approx(float(expected.total_price))


def test_cached_tokens_are_priced_at_the_cache_rate() -> None:
    pricing = pricing_for("ANTHROPIC", "claude-3-5-haiku-latest")
    assert pricing is not None
    plain = pricing.cost({"prompt_tokens": 10_000, "completion_tokens": 0})
    cached = pricing.cost({"prompt_tokens": 10_000, "completion_tokens": 0, "cached_tokens": 8_000})
    assert plain is not None and cached is not None
    assert cached < plain


def test_batch_prices_are_the_librarys_batch_variant() -> None:
    pricing = pricing_for("OPENAI", "gpt-4o-mini")
    assert pricing is not None
    online = pricing.estimate(1_000_000, 1_000_000)
    batch = pricing.estimate(1_000_000, 1_000_000, batch=True)
    expected = calc_price(
        Usage(input_tokens=1_000_000, output_tokens=1_000_000),
        "gpt-4o-mini",
        provider_id="openai",
        price_context={"processing": "batch"},
    )
    assert batch == pytest.approx(float(expected.total_price))
    assert online is not None and batch is not None and batch < online


@pytest.mark.parametrize(
    ("engine", "model"),
    [("OPENAI", "no-such-model-xyz"), ("LLAMACPP", "smollm2-135m-instruct"), ("REMOTE", "gpt-4o-mini"), ("OPENAI", "")],
)
def test_unknown_is_none_never_a_guess(engine: str, model: str) -> None:
    assert pricing_for(engine, model) is None


def test_totals_say_when_cost_is_unknown() -> None:
    totals = CostTotals()
    assert totals.describe() == "cost unknown"
    totals.add(0.5)
    totals.add(None)
    totals.add(0.25)
    assert totals.dollars == pytest.approx(0.75)
    assert totals.describe() == "$0.7500 (+1 rows unpriced)"
    assert not totals.known


def test_bedrock_batches_are_half_the_on_demand_price_and_vertex_takes_google_prefixed_names() -> None:
    bedrock = pricing_for("BEDROCK", "anthropic.claude-3-haiku-20240307-v1:0")
    assert bedrock is not None
    usage = {"prompt_tokens": 10_000, "completion_tokens": 2_000}
    online, batch = bedrock.cost(usage), bedrock.cost(usage, batch=True)
    assert online and batch == pytest.approx(online / 2)  # genai-prices lists no batch price for aws
    plain, prefixed = (
        pricing_for("GOOGLE_VERTEX", "gemini-2.5-flash"),
        pricing_for("GOOGLE_VERTEX", "google/gemini-2.5-flash"),
    )
    assert plain is not None and prefixed is not None
    assert prefixed.cost(usage, batch=True) == plain.cost(usage, batch=True) == pytest.approx(plain.cost(usage) / 2)  # type: ignore[operator]
