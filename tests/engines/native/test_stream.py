"""Token ids → streamed text (engines/native/stream.py ``TextDeltas``) and the kept chat cache
(engines/native/scheduler.py ``PromptCache``), with the default model's real tokenizer."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from infermux.configs import GenerationParams  # noqa: E402
from infermux.engines.native.scheduler import PromptCache  # noqa: E402
from infermux.engines.native.stream import TextDeltas  # noqa: E402
from infermux.models import hf_folder  # noqa: E402

pytestmark = pytest.mark.slow  # hf_folder() converts the default GGUF on a fresh machine


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return transformers.AutoTokenizer.from_pretrained(hf_folder())


def deltas(tokenizer: Any, text: str, **generation: Any) -> tuple[list[str], TextDeltas]:
    stream = TextDeltas(tokenizer, GenerationParams(**generation))
    out = [stream.add(token) for token in tokenizer(text, add_special_tokens=False)["input_ids"]]
    return out, stream


def test_a_character_split_over_tokens_is_shown_whole(tokenizer: Any) -> None:
    out, stream = deltas(tokenizer, "Hi 🦩 there")  # the flamingo is three byte tokens
    assert "\ufffd" not in "".join(out)
    assert "🦩" in out[-2] or "🦩" in out[-3]
    assert "".join(out) + stream.rest(stream.text()) == "Hi 🦩 there"


def test_text_that_may_start_a_stop_string_is_held_back_and_the_stop_never_shown(tokenizer: Any) -> None:
    out, stream = deltas(tokenizer, "Hi there, friend. END here", stop_strings=["END"])
    shown = "".join(out)
    assert stream.stopped and "END" not in shown and shown == "Hi there, friend. "
    out, stream = deltas(tokenizer, "one two three", stop_strings=["three four"])
    assert not stream.stopped
    assert "".join(out) + stream.rest(stream.text()) == "one two three"  # the held-back tail comes at the end
    assert len("".join(out)) <= len("one two three") - len("three four") + 1


def test_prompt_cache_gives_back_the_shared_prefix_once() -> None:
    cache = PromptCache()
    layers = [(torch.arange(6.0).view(1, 1, 6, 1), -torch.arange(6.0).view(1, 1, 6, 1))]
    cache.keep([1, 2, 3, 4, 5, 6, 7], layers)  # the last token was never evaluated: 6 columns kept
    assert cache.tokens == [1, 2, 3, 4, 5, 6]
    kept, shared = cache.take([1, 2, 3, 9, 9])
    assert shared == 3 and kept is not None and kept[0][0].flatten().tolist() == [0.0, 1.0, 2.0]
    assert cache.take([1, 2, 3, 9, 9]) == (None, 0)  # taken: one request uses it
    cache.keep([1, 2, 3], [(torch.zeros(1, 1, 3, 1), torch.zeros(1, 1, 3, 1))])
    kept, shared = cache.take([1, 2, 3])
    assert shared == 2  # at least one token is left to evaluate (the logits come from it)
