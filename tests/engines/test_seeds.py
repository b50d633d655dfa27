"""Seeds: the accepted range, and the mapping onto narrower backend seeds (never onto a "random" sentinel)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from infermux.configs import GenerationParams
from infermux.engines.seeds import GEMINI_SEEDS, LLAMA_CPP_SEEDS, SEED_MAX, SEED_MIN, VLLM_SEEDS, fold_seed

EDGES = [-1, 0xFFFFFFFF, 0x1FFFFFFFF, -(2**32) - 1, 2**32, SEED_MIN, SEED_MAX, -(2**31) - 1]


def test_the_range_is_a_signed_64_bit_integer() -> None:
    assert GenerationParams(seed=SEED_MIN).seed == SEED_MIN and GenerationParams(seed=SEED_MAX).seed == SEED_MAX
    for outside in (SEED_MIN - 1, SEED_MAX + 1, 2**64):
        with pytest.raises(ValidationError, match="seed"):
            GenerationParams(seed=outside)


@pytest.mark.parametrize(("low", "high"), [LLAMA_CPP_SEEDS, GEMINI_SEEDS])
def test_seeds_inside_a_domain_pass_unchanged_the_others_fold_into_it_repeatably(low: int, high: int) -> None:
    for seed in (0, 1, 12345, high):
        assert fold_seed(seed, low, high) == seed
    folded = [fold_seed(seed, low, high) for seed in EDGES]
    assert folded == [fold_seed(seed, low, high) for seed in EDGES]  # the same seed, the same value
    assert all(low <= value <= high for value in folded)
    assert len(set(folded)) == len(EDGES)  # distinct seeds stay distinct here


def test_no_seed_becomes_llama_cpps_random_sentinel() -> None:
    # 0xFFFFFFFF is LLAMA_DEFAULT_SEED; before, every seed whose low 32 bits were all ones (-1 among them) hit it.
    sentinel = 0xFFFFFFFF
    assert all(fold_seed(s, *LLAMA_CPP_SEEDS) != sentinel for s in [*EDGES, *range(-(2**12), 2**12)])
    assert fold_seed(-1, *LLAMA_CPP_SEEDS) != fold_seed(0xFFFFFFFF, *LLAMA_CPP_SEEDS)


def test_vllm_keeps_every_seed_but_its_no_seed_sentinel() -> None:
    # vLLM's SamplingParams reads seed -1 as None ("random"): -1 alone is mapped, to a fixed other value.
    for seed in (0, 7, -2, SEED_MIN, SEED_MAX, 0xFFFFFFFF):
        assert fold_seed(seed, *VLLM_SEEDS) == seed
    mapped = fold_seed(-1, *VLLM_SEEDS)
    assert mapped != -1 and mapped == fold_seed(-1, *VLLM_SEEDS) and SEED_MIN <= mapped <= SEED_MAX


def test_remote_vllm_sends_the_mapped_seed() -> None:
    from infermux.configs import ModelParams, RemoteParams
    from infermux.engines.registry import engine_class
    from infermux.types import Conversation

    row = Conversation.model_validate({"messages": [{"role": "user", "content": "hi"}]})
    sent = []
    for seed in (7, -1):
        engine = engine_class("REMOTE_VLLM")(
            ModelParams(model_name="m"), generation_params=GenerationParams(seed=seed, temperature=1.0),
            remote_params=RemoteParams(api_url="http://127.0.0.1:9/v1"),
        )  # fmt: skip
        sent.append(engine.build_body(row, engine.generation_params)["seed"])
    assert sent == [7, fold_seed(-1, *VLLM_SEEDS)]
