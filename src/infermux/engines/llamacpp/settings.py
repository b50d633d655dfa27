"""The ``llama_cpp.Llama`` arguments the LLAMACPP engine loads with: llama.cpp's own defaults, not the binding's.

llama-cpp-python and llama.cpp's own tools (``llama-server``, ``llama-cli``) default differently, and the
binding's choice is the slower one on CPUs:

- ``flash_attn``: the binding defaults to off; llama.cpp's tools to ``auto``, which is on wherever the
  backend has the kernel (every CPU). infermux loads with ``flash_attn=True``.
- ``n_threads`` (passes over one sequence's tokens, one at a time): the binding takes half the logical
  CPUs; llama.cpp's tools take every physical core (:func:`~.threads.math_cores`). A decode step of
  continuous batching often holds one sequence (llama.cpp splits a step into passes over runs of
  consecutive sequences), so half the cores there is half the speed.
- ``n_threads_batch`` (passes over several tokens): ``n_threads`` when the user set it (as llama.cpp's
  ``-tb`` follows ``-t``), else the same cores.

Measured on 2 cores (docs/benchmarks.md, LLAMACPP): ``infermux serve`` went from 0.83x to above llama-server's
own defaults; batch jobs kept their speed. Every key the user gives in ``model_kwargs`` wins. Flash attention
changes the sums of attention, so answers are the library's *with the same settings*: compare against a
``Llama`` built from :func:`llama_kwargs` (the tests do).
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
    kwargs.setdefault("flash_attn", True)
    cores = math_cores()
    kwargs.setdefault("n_threads", cores)
    kwargs.setdefault("n_threads_batch", kwargs["n_threads"] if "n_threads" in model_kwargs else cores)
    return kwargs
