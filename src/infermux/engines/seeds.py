"""Seeds: the range infermux accepts, and each backend's own seed domain.

A seed is any integer from ``SEED_MIN`` to ``SEED_MAX`` (a signed 64-bit integer, the range vLLM's server
and PyTorch's generators take; ``serve`` answers 400 outside it). A backend with a narrower domain gets
the seed through :func:`fold_seed`: seeds inside its domain pass unchanged (a seed gives the answers it
gave before), the others are mapped onto it by a fixed hash, never truncated, and never onto a value
the backend reads as "pick a random seed" (llama.cpp's ``0xFFFFFFFF``, vLLM's ``-1``). So every seed,
``-1`` and ``4294967295`` included, gives repeatable answers on every engine.
"""

from __future__ import annotations

import hashlib

from infermux.configs.generation_params import SEED_MAX, SEED_MIN

__all__ = ["GEMINI_SEEDS", "LLAMA_CPP_SEEDS", "SEED_MAX", "SEED_MIN", "VLLM_SEEDS", "fold_seed"]

#: llama.cpp's ``llama_sampler_init_dist`` takes a ``uint32_t``; ``LLAMA_DEFAULT_SEED`` (0xFFFFFFFF) means random.
LLAMA_CPP_SEEDS = (0, 0xFFFFFFFE)
#: Gemini's ``generationConfig.seed`` is an int32.
GEMINI_SEEDS = (-(2**31), 2**31 - 1)
#: vLLM (the VLLM engine and a ``vllm serve`` server) takes 64-bit seeds but reads ``-1`` as "no seed".
VLLM_SEEDS = (SEED_MIN, SEED_MAX, frozenset({-1}))


def fold_seed(seed: int, low: int, high: int, avoid: frozenset[int] = frozenset()) -> int:
    """``seed`` itself when ``low <= seed <= high`` and not in ``avoid``, else a value in that range and
    not in ``avoid``, fixed by ``seed`` alone."""
    if low <= seed <= high and seed not in avoid:
        return seed
    key = str(seed)
    while True:
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
        value = low + int.from_bytes(digest, "big") % (high - low + 1)
        if value not in avoid:
            return value
        key += "'"
