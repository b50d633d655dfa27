"""The ``Llama`` arguments the LLAMACPP engine loads with: every core's threads, flash attention on with a bfloat16 V
cache (off with GPU layers), the user's keys winning."""

from __future__ import annotations

import pytest

from infermux.engines.llamacpp.settings import DEFAULT_N_CTX, GGML_TYPE_BF16, GGML_TYPE_F16, llama_kwargs
from infermux.engines.llamacpp.threads import math_cores


def test_threads_default_to_every_core_and_flash_attention_runs_with_a_bfloat16_v_cache() -> None:
    kwargs = llama_kwargs({})
    cores = math_cores()
    assert kwargs == {"n_ctx": DEFAULT_N_CTX, "verbose": False, "flash_attn": True, "type_k": GGML_TYPE_F16,
                      "type_v": GGML_TYPE_BF16, "n_threads": cores, "n_threads_batch": cores}  # fmt: skip
    assert llama_kwargs({"flash_attn": True})["type_v"] == GGML_TYPE_BF16  # the opt-in of old gets it too


def test_a_cache_type_or_gpu_layers_given_keep_the_library_defaults() -> None:
    assert "type_k" not in llama_kwargs({"type_v": 8}) and llama_kwargs({"type_v": 8})["flash_attn"]
    assert "type_v" not in llama_kwargs({"type_k": 1})
    assert "type_v" not in llama_kwargs({"flash_attn": False})
    gpu = llama_kwargs({"n_gpu_layers": -1})
    assert not gpu["flash_attn"] and "type_v" not in gpu
    assert llama_kwargs({"n_gpu_layers": 0})["flash_attn"]


def test_every_user_key_wins_and_batch_threads_follow_n_threads() -> None:
    kwargs = llama_kwargs({"flash_attn": False, "n_threads": 1, "n_ctx": 512, "verbose": True})
    assert kwargs == {"flash_attn": False, "n_threads": 1, "n_threads_batch": 1, "n_ctx": 512, "verbose": True}
    assert llama_kwargs({"n_threads_batch": 3})["n_threads_batch"] == 3
    assert llama_kwargs({}, n_ctx=4096)["n_ctx"] == 4096
    assert llama_kwargs({"n_ctx": 256}, n_ctx=4096)["n_ctx"] == 256


@pytest.mark.slow
def test_the_engine_loads_with_the_effective_settings() -> None:
    llama_cpp = pytest.importorskip("llama_cpp")

    from infermux.configs import ModelParams
    from infermux.engines.llamacpp.engine import LlamaCppInferenceEngine

    for given in ({}, {"flash_attn": False, "n_threads": 1}):
        model = ModelParams(model_name="smollm2-135m-instruct", model_kwargs={"n_ctx": 256, "n_seq_max": 2, **given})
        engine = LlamaCppInferenceEngine(model)
        try:
            want = llama_kwargs({"n_ctx": 256, **given})
            params = engine._llama.context_params
            assert params.flash_attn_type == int(want["flash_attn"])  # LLAMA_FLASH_ATTN_TYPE_ENABLED / _DISABLED
            assert (params.n_threads, params.n_threads_batch) == (want["n_threads"], want["n_threads_batch"])
            assert (params.type_k, params.type_v) == (want.get("type_k", 1), want.get("type_v", 1))
            assert llama_cpp.llama_n_threads(engine._decoder._ctx) == want["n_threads"]  # the decoder's context too
        finally:
            engine.close()
