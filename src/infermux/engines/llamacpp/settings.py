"""The ``llama_cpp.Llama`` arguments the LLAMACPP engine loads with (one place for the engine, the tests'
raw library and the benchmarks, so both sides always run the same computation).

- ``n_threads`` (passes over one sequence's tokens, one at a time): llama-cpp-python takes half the logical
  CPUs; llama.cpp's own tools (``llama-server``, ``llama-cli``) every physical core
  (:func:`~.threads.math_cores`), and so does infermux. A step of continuous batching often holds one
  sequence (llama.cpp splits a step into passes over runs of consecutive sequences), and with half the
  cores that pass ran at half the speed. The thread count does not change answers.
- ``n_threads_batch`` (passes over several tokens): ``n_threads`` when the user set it (as llama.cpp's
  ``-tb`` follows ``-t``), else the same cores.
- ``flash_attn``: on (llama-cpp-python has it off; llama.cpp's tools default to ``auto``, which is on for
  CPUs), with a bfloat16 V cache (``type_v``; K stays float16) whenever flash attention is on and the user
  sets neither cache type. On CPUs llama.cpp's flash attention (ggml-cpu ``ops.cpp``,
  ``ggml_compute_forward_flash_attn_ext_f16``) picks a kernel by shape when K and V are both float16 (or
  float32): a pass with 64+ query tokens per sequence takes a tiled float32 kernel, a lone sequence over
  512+ cache cells (one KV stream in the pass) splits its cells by thread and merges the parts, anything
  else takes the one-row kernel, which accumulates V in float16. So an answer would depend on its
  neighbours in the batch (a lone sequence against several in a pass) and on how its prompt was split (a
  reused prefix), by more than float32 rounding: a greedy answer flipped. With K and V of different types
  only the one-row kernel runs, whatever the shape: each query row alone, masked cells skipped, V
  accumulated in float32, so each sequence computes as if alone, bit for bit (tests/engines/llamacpp/
  test_batch_independence.py). bfloat16 keeps float32's range with 8 bits of mantissa, about as far from
  the float16 cache as flash attention itself is from the plain path. ``type_v: 1`` (float16) gives
  llama-server's own computation back, with its batch dependence; ``flash_attn: false``, the plain path.
  With ``n_gpu_layers`` set, flash attention stays off, as llama-cpp-python: the GPU kernels were not
  checked.

Every key the user gives in ``model_kwargs`` wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from infermux.engines.llamacpp.threads import math_cores

__all__ = ["DEFAULT_N_CTX", "GGML_TYPE_BF16", "GGML_TYPE_F16", "llama_kwargs"]

DEFAULT_N_CTX = 2048
GGML_TYPE_F16 = 1  # ggml.h enum ggml_type
GGML_TYPE_BF16 = 30


def llama_kwargs(model_kwargs: Mapping[str, Any], *, n_ctx: int | None = None) -> dict[str, Any]:
    """``Llama(model_path=..., **llama_kwargs(...))`` loads as the engine does; ``model_kwargs`` are the
    user's ``Llama`` arguments (the engine's own keys already taken out) and win over every default.
    ``n_ctx``: the context to use when ``model_kwargs`` sets none (default :data:`DEFAULT_N_CTX`)."""
    kwargs = dict(model_kwargs)
    kwargs.setdefault("n_ctx", n_ctx or DEFAULT_N_CTX)
    kwargs.setdefault("verbose", False)
    kwargs.setdefault("flash_attn", not kwargs.get("n_gpu_layers"))
    if kwargs["flash_attn"] and "type_k" not in kwargs and "type_v" not in kwargs:
        kwargs.update(type_k=GGML_TYPE_F16, type_v=GGML_TYPE_BF16)
    cores = math_cores()
    kwargs.setdefault("n_threads", cores)
    kwargs.setdefault("n_threads_batch", kwargs["n_threads"] if "n_threads" in model_kwargs else cores)
    return kwargs
