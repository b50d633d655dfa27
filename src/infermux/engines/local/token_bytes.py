"""The raw bytes of a Hugging Face tokenizer's tokens, for token log-probabilities (NATIVE, VLLM).

Decoding one token id alone is lossy: a byte-level BPE token may hold part of a multi-byte character
(an emoji, a CJK or accented letter split over tokens), and its text is then U+FFFD or empty. The
bytes come from the token's vocabulary entry instead:

* byte-level BPE (GPT-2, Llama 3, SmolLM, Qwen, ...): each character of the entry stands for one byte;
* SentencePiece with byte fallback (Llama 2, Gemma, ...): ``<0xHH>`` entries are one byte, ``▁`` is a space;
* added and special tokens (``<|im_end|>``): their text's UTF-8.

Joining an answer's token bytes gives the answer's exact UTF-8 (special tokens as their names).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["TokenBytes"]

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_level_alphabet() -> dict[str, int]:
    """Character -> byte of byte-level BPE: printable Latin-1 bytes stand for themselves, the other
    bytes (controls, space, ...) for the characters from U+0100 on, in byte order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    code = {b: b for b in printable}
    for b in range(256):
        if b not in code:
            code[b] = 0x100 + len(code) - len(printable)
    return {chr(c): b for b, c in code.items()}


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is not None:
        return "ByteLevel" in repr(decoder)
    return hasattr(tokenizer, "byte_decoder")  # a slow (Python) GPT-2 style tokenizer


class TokenBytes:
    """``tokenizer``'s token id -> that token's bytes (cached per id)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        added = getattr(tokenizer, "added_tokens_decoder", None) or {}
        self._cache = {int(i): str(getattr(t, "content", t)).encode("utf-8") for i, t in added.items()}
        self._alphabet = _byte_level_alphabet() if _is_byte_level(tokenizer) else None

    def __call__(self, token_id: int) -> bytes:
        found = self._cache.get(token_id)
        if found is None:
            found = self._cache[token_id] = self._bytes(token_id)
        return found

    def _bytes(self, token_id: int) -> bytes:
        entry = self._tokenizer.convert_ids_to_tokens(token_id)
        if not isinstance(entry, str):  # an id outside the vocabulary
            return self._tokenizer.decode([token_id]).encode("utf-8")
        if self._alphabet is not None and all(c in self._alphabet for c in entry):
            return bytes(self._alphabet[c] for c in entry)
        fallback = _BYTE_FALLBACK.fullmatch(entry)
        if fallback:
            return bytes([int(fallback.group(1), 16)])
        return entry.replace("\u2581", " ").encode("utf-8")
