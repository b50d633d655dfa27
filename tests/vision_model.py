"""A tiny vision-language model for tests: a real Idefics3 (SmolVLM) architecture, made at test time.

No vision-language model can be downloaded here, so :func:`tiny_vision_model` builds one from
``Idefics3Config`` with tiny dimensions and seeded random weights. Its text side has the shape of the
default model's family (a Llama decoder, SmolLM2's tokenizer and ChatML turns) and its processor is a real
``Idefics3Processor``. Transformers (``AutoModelForImageTextToText``/``AutoProcessor``) and vLLM
(``Idefics3ForConditionalGeneration``, CPU backend) both load the folder. Answers are gibberish but exact.

- Tokenizer: the default model's (from its derived Hugging Face folder) plus the tokens Idefics3 needs:
  ``<fake_token_around_image>``, ``<image>``, ``<end_of_utterance>``, ``<global-img>`` and the 6x6
  ``<row_i_col_j>`` tokens; the vocabulary is padded to a multiple of 64.
- Images: no splitting, every image squared to 64x64 pixels, 8x8-pixel patches, pixel shuffle by 2:
  :data:`IMAGE_TOKENS` ``<image>`` tokens per image (plus the two ``<fake_token_around_image>`` and one
  ``<global-img>`` around them).
- Heads of 32 (vision) and 64 (text) dimensions: sizes vLLM's CPU attention supports.
- Chat template: SmolLM2's ChatML turns; a message's content is a string or a list of ``{"type": "text"}``
  and ``{"type": "image"}`` parts, an image part becoming ``<image>`` where it stands.

Built once per content hash (:data:`SPEC`, this builder's version and the tokenizer it starts from) under
the folder the default model's Hugging Face copy uses (:func:`infermux.models.default.cache_dir`); a file
lock makes concurrent sessions wait for one build. ``python -m tests.vision_model`` builds it and prints
the folder (for benchmarks and manual runs).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["IMAGE_SIZE", "IMAGE_TOKENS", "SPEC", "tiny_vision_model"]

#: Bump when the build changes in a way SPEC does not show.
_BUILDER_VERSION = 1
_MARKER = "infermux_tiny_vision.json"

IMAGE_SIZE = 64
_PATCH = 8
_SCALE = 2
#: ``<image>`` tokens per image: (64 / 8)^2 patches, merged 2x2 by the pixel shuffle.
IMAGE_TOKENS = (IMAGE_SIZE // _PATCH) ** 2 // _SCALE**2

_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: Everything that decides the folder's content (with the tokenizer it starts from).
SPEC: dict[str, Any] = {
    "seed": 0,
    "dtype": "float32",  # small anyway; transformers and vLLM agree on more greedy tokens than in bf16
    "vision": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": IMAGE_SIZE,
        "patch_size": _PATCH,
    },
    "text": {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 64,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        # Wider than the usual 0.02, so the random model's next-token choices are clear-cut.
        "initializer_range": 0.2,
    },
    "scale_factor": _SCALE,
    "image_processor": {
        "do_image_splitting": False,
        "size": {"longest_edge": IMAGE_SIZE},
        "max_image_size": {"longest_edge": IMAGE_SIZE},
    },
    "extra_tokens": ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
    + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)],
    "vocab_multiple": 64,
    "template": _TEMPLATE,
}


def tiny_vision_model(root: str | Path | None = None) -> Path:
    """The tiny Idefics3 model's folder, built on first use (a few seconds) and cached by content hash.

    ``root`` defaults to infermux's cache folder (``$INFERMUX_CACHE_DIR`` or ``~/.cache/infermux``), where
    the default model's Hugging Face copy lives too.
    """
    from infermux.models.default import cache_dir, hf_folder

    tokenizer_source = hf_folder()
    key = json.dumps(
        {"spec": SPEC, "builder": _BUILDER_VERSION, "tokenizer": tokenizer_source.name}, sort_keys=True
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    target = Path(root).expanduser() if root is not None else cache_dir()
    target = target / f"tiny-idefics3-{digest}"
    if (target / _MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)

    from filelock import FileLock

    with FileLock(str(target) + ".lock"):
        if (target / _MARKER).is_file():
            return target
        shutil.rmtree(target, ignore_errors=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            _build(tokenizer_source, scratch)
            (scratch / _MARKER).write_text(key + "\n", encoding="utf-8")
            os.chmod(scratch, 0o755)  # mkdtemp and safetensors write owner-only entries; a cache is shared
            for entry in scratch.iterdir():
                os.chmod(entry, 0o644)
            os.replace(scratch, target)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
    return target


def _build(tokenizer_source: Path, out: Path) -> None:
    import torch
    from transformers import (
        AutoTokenizer,
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    tokenizer.add_special_tokens({"additional_special_tokens": SPEC["extra_tokens"]})
    multiple = SPEC["vocab_multiple"]
    vocab = -(-len(tokenizer) // multiple) * multiple

    text = dict(SPEC["text"])
    rope_theta = text.pop("rope_theta")
    text_config = {
        "model_type": "llama",
        **text,
        "vocab_size": vocab,
        "rope_parameters": {"rope_type": "default", "rope_theta": rope_theta},
        "tie_word_embeddings": True,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "hidden_act": "silu",
    }
    config = Idefics3Config(
        vision_config=dict(SPEC["vision"]),
        text_config=text_config,
        scale_factor=SPEC["scale_factor"],
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(SPEC["seed"])
    model = Idefics3ForConditionalGeneration(config).to(getattr(torch, SPEC["dtype"])).eval()
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)

    image_processor = Idefics3ImageProcessorPil(**SPEC["image_processor"])
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=IMAGE_TOKENS, chat_template=_TEMPLATE
    )
    processor.save_pretrained(out)
    tokenizer.chat_template = _TEMPLATE  # text-only loaders (AutoTokenizer) get the same turns
    tokenizer.save_pretrained(out)


if __name__ == "__main__":
    print(tiny_vision_model())
