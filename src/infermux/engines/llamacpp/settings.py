"""The ``llama_cpp.Llama`` arguments the LLAMACPP engine loads with (one place for the engine, the tests'
raw library and the benchmarks, so both sides always run the same computation).

- ``n_threads`` (passes over one sequence's tokens, one at a time): llama-cpp-python takes half the logical
  CPUs; llama.cpp's own tools (``llama-server``, ``llama-cli``) every physical core
  (:func:`~.threads.math_cores`), and so does infermux. A step of continuous batching often holds one
  sequence (llama.cpp splits a step into passes over runs of consecutive sequences), and with half the
  cores that pass ran at half the speed. The thread count does not change answers.
- ``n_threads_batch`` (passes over several tokens): ``n_threads`` when the user set it (as llama.cpp's
  ``-tb`` follows ``-t``), else the same cores.
- ``flash_attn``: off, as llama-cpp-python (llama.cpp's tools default to ``auto``, which is on for CPUs).
  On CPUs llama.cpp's flash attention takes other kernels by shape: a decode token accumulates in float16,
  a prompt piece of 64+ tokens takes a tiled float32 kernel, and a lone sequence over 512+ cached tokens
  splits its attention by thread. So an answer would depend on its neighbours in the batch and on how its
  prompt was split (a reused prefix), by more than float32 rounding: 0.03 nats where a shared system prompt
  was reused, which flipped a greedy answer. Without it each sequence computes as if alone, bit for bit.
  ``model_kwargs: {flash_attn: true}`` turns it on (faster ``serve``, see docs/benchmarks.md).

Every key the user gives in ``model_kwargs`` wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from infermux.engines.llamacpp.threads import math_cores

__all__ = ["DEFAULT_N_CTX", "llama_kwargs"]

DEFAULT_N_CTX = 2048


def llama_kwargs(model_kwargs: Mapping[str, Any], *, n_ctx: int | None = None) -> dict[str, Any]:
    """``Llama(model_path=..., **llama_kwargs(...))`` loads as the engine does; ``model_kwargs`` are the
    user's ``Llama`` arguments (the engine's own keys already taken out) and win over every default.
    ``n_ctx``: the context to use when ``model_kwargs`` sets none (default :data:`DEFAULT_N_CTX`)."""
    kwargs = dict(model_kwargs)
    kwargs.setdefault("n_ctx", n_ctx or DEFAULT_N_CTX)
    kwargs.setdefault("verbose", False)
    kwargs.setdefault("flash_attn", False)
    cores = math_cores()
    kwargs.setdefault("n_threads", cores)
    kwargs.setdefault("n_threads_batch", kwargs["n_threads"] if "n_threads" in model_kwargs else cores)
    return kwargs
