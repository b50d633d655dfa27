"""Bounds on what local engines compile for guided decoding: refused before compiling, fast and small;
constraints within them still compile (LLAMACPP's converter here, no model needed)."""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

import pytest

from infermux.configs.generation_params import GuidedDecodingParams
from infermux.engines.guided_bounds import MAX_DEPTH, MAX_EXPANSION, check_guided
from infermux.errors import InputError

HUGE_ARRAY = {"type": "array", "items": {"type": "integer"}, "minItems": 1_000_000_000}


def deep(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth - 1):
        schema = {"type": "array", "items": schema}
    return schema


@pytest.mark.parametrize(
    ("guided", "bound"),
    [
        ({"json": HUGE_ARRAY}, "grammar elements"),
        ({"json": {"type": "string", "maxLength": 10**12}}, "grammar elements"),
        (
            {
                "json": {
                    "type": "array",
                    "items": {"type": "array", "items": {"type": "integer"}, "maxItems": 400},
                    "maxItems": 400,
                }
            },
            "grammar elements",
        ),  # each bound is fine, their product is not
        ({"json": {"type": "string", "pattern": "(ab{100}){2000}"}}, "grammar elements"),
        ({"json": {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(5000)}}}, "characters"),
        ({"json": deep(MAX_DEPTH + 2)}, "levels deep"),
        ({"json": {"$ref": "https://example.com/schema.json"}}, "outside the schema"),
        ({"regex": "[0-9]{1000000000}"}, "grammar elements"),
        ({"regex": "(x{50}|y){5000}"}, "grammar elements"),
        ({"regex": "a" * 5000}, "characters"),
        ({"choice": [str(i) for i in range(5000)]}, "strings"),
    ],
)
def test_constraints_past_a_bound_are_refused_fast_naming_it(guided: dict[str, Any], bound: str) -> None:
    params = GuidedDecodingParams(**guided)
    tracemalloc.start()
    start = time.monotonic()
    for engine in ("LLAMACPP", "NATIVE", "VLLM"):
        with pytest.raises(InputError, match=bound) as caught:
            check_guided(params, engine)
        assert engine in str(caught.value)
    took = time.monotonic() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert took < 2.0 and peak < 50 * 2**20, (took, peak)


def test_llamacpp_grammars_are_bounded_before_they_are_built() -> None:
    pytest.importorskip("llama_cpp")
    from infermux.engines.llamacpp.grammar import grammar_for

    with pytest.raises(InputError, match="grammar elements"):
        grammar_for(GuidedDecodingParams(json=HUGE_ARRAY))
    with pytest.raises(InputError, match="grammar elements"):
        grammar_for(GuidedDecodingParams(regex="a{1000000}"))
    # The largest array the bounds let through compiles quickly into a grammar of bounded size.
    largest = {"type": "array", "items": {"type": "integer"}, "minItems": MAX_EXPANSION // 5}
    check_guided(GuidedDecodingParams(json=largest), "LLAMACPP")
    start = time.monotonic()
    grammar = grammar_for(GuidedDecodingParams(json=largest))
    assert time.monotonic() - start < 10 and len(grammar) < 2**20 * 8


@pytest.mark.parametrize(
    "guided",
    [
        {"json": {"type": "array", "items": {"type": "integer"}, "minItems": 10_000}},
        {
            "json": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 200},
                    "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}, "maxItems": 20},
                },
                "$defs": {"tag": {"type": "string", "pattern": "^[a-z]{1,30}$"}},
            }
        },
        {"json": deep(MAX_DEPTH - 1)},
        {"regex": r"\d{3}-\d{4}"},
        {"choice": ["yes", "no"]},
    ],
)
def test_ordinary_constraints_pass(guided: dict[str, Any]) -> None:
    check_guided(GuidedDecodingParams(**guided), "LLAMACPP")


def test_every_local_engine_holds_its_constraints_to_the_bounds() -> None:
    from infermux.engines.llamacpp.engine import LlamaCppInferenceEngine
    from infermux.engines.native.engine import NativeTextInferenceEngine
    from infermux.engines.native.params import guided_processor
    from infermux.engines.registry import engine_class
    from infermux.engines.vllm import VLLMInferenceEngine

    assert LlamaCppInferenceEngine.compiles_guided and NativeTextInferenceEngine.compiles_guided
    assert VLLMInferenceEngine.compiles_guided and not engine_class("OPENAI").compiles_guided
    params = GuidedDecodingParams(json=HUGE_ARRAY)
    with pytest.raises(InputError, match="NATIVE"):  # before xgrammar is imported or the tokenizer read
        guided_processor(params, tokenizer=None, vocab_size=0)
    from infermux.configs.generation_params import GenerationParams

    with pytest.raises(InputError, match="VLLM"):  # before vLLM's structured-output params are built
        VLLMInferenceEngine._guided(None, GenerationParams(guided_decoding=params))  # type: ignore[arg-type]
