"""Checks shared by the engine and serve tests: token log-probabilities carry each token's real bytes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: The default model's greedy answer to this splits CJK characters and a full-width "！" over several tokens
#: (LLAMACPP, NATIVE and VLLM alike: "晴晴！Hello！..." within 16 tokens).
SPLIT_PROMPT = "Translate 'hello' into Chinese."
SPLIT_TOKENS = 16
REPLACEMENT = list("\ufffd".encode())


def _field(token: Any, name: str) -> Any:
    return token[name] if isinstance(token, dict) else getattr(token, name)


def _partial(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def assert_exact_bytes(text: str, tokens: Sequence[Any]) -> None:
    """Joining the answer tokens' ``bytes`` gives the answer's UTF-8 exactly; the answer has tokens that are
    part of a character, and neither they nor any partial alternative carries a replacement character's bytes."""
    joined = b"".join(bytes(_field(t, "bytes")) for t in tokens)
    assert joined == text.encode("utf-8"), (joined, text)
    chosen = [bytes(_field(t, "bytes")) for t in tokens]
    assert any(_partial(raw) for raw in chosen), "the answer should split a multi-byte character"
    alternatives = [_field(a, "bytes") for t in tokens for a in _field(t, "top_logprobs") or []]
    assert all(raw is not None for raw in alternatives)
    assert any(_partial(bytes(raw)) for raw in alternatives), "some alternatives should be partial characters"
    assert all(_field(t, "bytes") != REPLACEMENT for t in tokens) and REPLACEMENT not in alternatives


def assert_joins(text: str, tokens: Sequence[Any]) -> None:
    """An answer that ended by itself: its tokens' bytes join to its text, with no end-of-turn token listed."""
    joined = b"".join(bytes(_field(t, "bytes")) for t in tokens)
    assert joined == text.encode("utf-8"), (joined, text)
    assert all("<|" not in _field(t, "token") for t in tokens)
