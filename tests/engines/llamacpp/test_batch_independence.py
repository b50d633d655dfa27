"""With the engine's default ``Llama`` settings (flash attention on, bfloat16 V cache), a prompt decoded
beside others gets, bit for bit, the logits it gets alone: on the shapes where llama.cpp's CPU flash
attention would otherwise pick another kernel (settings.py): a prompt whose shared prefix another
sequence evaluated (a short remainder after a long piece), and a prompt over 256 tokens (a lone sequence
over 512 cache cells against several in one pass)."""

from __future__ import annotations

import ctypes
from typing import Any

import pytest

pytest.importorskip("llama_cpp")

from infermux.engines.llamacpp.decode import DecodeResult, MultiSequenceDecoder, Request, SamplingSpec
from infermux.engines.llamacpp.settings import llama_kwargs
from infermux.models import gguf_path

pytestmark = pytest.mark.slow

N_CTX_SEQ = 512
SYSTEM = "You are a careful assistant. " + " ".join(f"Rule {i}: answer briefly and politely." for i in range(12))
TEXTS = [
    "Name three colours.",
    SYSTEM + " Question: what is the capital of France?",
    SYSTEM + " Question: how many legs has a spider?",
    "Tell me a story about a fox. " * 40 + "Now summarise it.",
]


def decode(decoder: MultiSequenceDecoder, prompts: list[list[int]], n_vocab: int) -> list[tuple[list[int], Any]]:
    """Greedy answers to ``prompts`` submitted together, with the logits each token was picked from."""
    import numpy as np  # a dependency of llama_cpp

    results: list[DecodeResult | Exception] = []
    logits: list[list[Any]] = [[] for _ in prompts]
    for i, prompt in enumerate(prompts):

        def keep(token: int, ptr: int, i: int = i) -> None:
            row = ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float))
            logits[i].append(np.ctypeslib.as_array(row, (n_vocab,)).copy())

        decoder.submit(Request(list(prompt), 40, SamplingSpec(), results.append, on_logits=keep))
    while decoder.busy:
        decoder.step()
    decoder.forget_cache()  # the next call evaluates its prompts in full
    assert len(results) == len(prompts) and all(isinstance(r, DecodeResult) for r in results)
    return [([int(np.argmax(row)) for row in rows], np.array(rows)) for rows in logits]


def test_a_prompt_beside_others_gets_its_alone_logits_bit_for_bit() -> None:
    import llama_cpp
    import numpy as np

    kwargs = llama_kwargs({"n_ctx": N_CTX_SEQ})
    assert kwargs["flash_attn"]  # the fast path is the one checked
    llama = llama_cpp.Llama(model_path=str(gguf_path()), **kwargs)
    decoder = MultiSequenceDecoder(llama, len(TEXTS), N_CTX_SEQ)
    try:
        prompts = [llama.tokenize(t.encode(), add_bos=True, special=False) for t in TEXTS]
        assert len(prompts[3]) > 256 and len(prompts[1]) > 64
        together = decode(decoder, prompts, llama.n_vocab())
        for prompt, (tokens, logits) in zip(prompts, together, strict=True):
            alone_tokens, alone_logits = decode(decoder, [prompt], llama.n_vocab())[0]
            assert tokens == alone_tokens
            assert np.array_equal(logits, alone_logits)
    finally:
        decoder.close()
        llama.close()
