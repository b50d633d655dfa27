"""infermux.engines.local.token_bytes: a token id's own bytes, on the default model's tokenizer and a SentencePiece-style one."""

from __future__ import annotations

import pytest

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from infermux.engines.local.token_bytes import TokenBytes, _byte_level_alphabet  # noqa: E402

TEXTS = ["Hi 😀 中文 café", "naïve\tdéjà vu\n\n  ¿Qué? ½ €5", "<|im_end|>"]


def test_byte_level_alphabet_covers_every_byte_once() -> None:
    alphabet = _byte_level_alphabet()
    assert sorted(alphabet.values()) == list(range(256))
    assert alphabet["Ġ"] == ord(" ") and alphabet["a"] == ord("a") and alphabet["Ċ"] == ord("\n")


@pytest.mark.slow
def test_default_tokenizer_tokens_join_to_the_exact_text() -> None:
    from infermux.models import hf_folder

    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_folder())
    raw = TokenBytes(tokenizer)
    for text in TEXTS:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert b"".join(raw(i) for i in ids) == text.encode()
    ids = tokenizer.encode(TEXTS[0], add_special_tokens=False)
    partial = [i for i in ids if "\ufffd" in tokenizer.decode([i])]  # lossy when decoded alone
    assert partial and all(raw(i) != "\ufffd".encode() for i in partial)
    assert raw(tokenizer.convert_tokens_to_ids("<|im_end|>")) == b"<|im_end|>"


def test_sentencepiece_byte_fallback_tokens_are_single_bytes() -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<unk>": 0, "<0xC3>": 1, "<0xA9>": 2, "\u2581": 3, "c": 4, "a": 5, "f": 6, "\u2581c": 7, "\u2581ca": 8}
    merges = [("\u2581", "c"), ("\u2581c", "a")]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend)
    ids = tokenizer.encode("café", add_special_tokens=False)
    raw = TokenBytes(tokenizer)
    assert [raw(i) for i in ids] == [b" ca", b"f", b"\xc3", b"\xa9"]
    assert tokenizer.decode(ids) == " café"
