"""Which model to load and how."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, field_validator

from infermux.configs._base import ConfigModel
from infermux.templates import check_chat_template

__all__ = ["ModelParams"]

_DTYPES = {
    "float32": "float32", "fp32": "float32", "f32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "f16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float64": "float64", "fp64": "float64", "f64": "float64", "double": "float64",
    "auto": "auto",
}  # fmt: skip


class ModelParams(ConfigModel):
    """Model and tokenizer loading settings (the SPEC's ``model:`` section)."""

    oumi_ignored: ClassVar[frozenset[str]] = frozenset(
        {"shard_for_eval", "model_engine", "processor_kwargs", "enable_liger_kernel", "freeze_layers"}
    )

    fingerprinted_when_set: ClassVar[frozenset[str]] = frozenset({"tool_call_parser", "chat_template_kwargs"})

    model_name: str = Field(min_length=1)
    """Model id, local folder, ``.gguf`` file, served model name, or ``smollm2-135m-instruct``."""
    adapter_model: str | None = None
    """Path (or served name) of a LoRA adapter applied on top of ``model_name``."""
    tokenizer_name: str | None = None
    """Tokenizer id or path, when it differs from ``model_name``."""
    tokenizer_pad_token: str | None = None
    """Pad token to set on the tokenizer when it has none."""
    tokenizer_kwargs: dict[str, Any] = {}
    """Extra keyword arguments for the tokenizer constructor."""
    model_revision: str | None = None
    """Revision (branch, tag or commit) of a hub model."""
    model_max_length: int | None = Field(default=None, ge=1)
    """Maximum sequence length; longer prompts are truncated (with a warning)."""
    load_pretrained_weights: bool = True
    """Load the trained weights (false builds the architecture with random weights)."""
    trust_remote_code: bool = False
    """Allow model code shipped with the checkpoint to run."""
    torch_dtype_str: str = "float32"
    """Weights precision: float32, float16, bfloat16, float64 (or auto)."""
    device_map: str | None = "auto"
    """Device placement: auto, cpu, cuda, cuda:0, ... (null: library default)."""
    compile: bool = False
    """JIT-compile the model with torch.compile."""
    attn_implementation: str | None = None
    """Attention kernel: sdpa, eager, flash_attention_2, ... (null: library default)."""
    chat_template: str | None = None
    """Chat template overriding the model's: a built-in name (Oumi's: chat_ml, default, default_gen,
    gemma2-it, gpt2, internvl3, llama3-instruct, llava, molmo, phi3-instruct, qwen2-vl-instruct,
    qwen3-vl-instruct, zephyr), ``auto`` (the model's own), a Jinja template, or the path of a file holding one."""
    model_kwargs: dict[str, Any] = {}
    """Extra keyword arguments for the engine's model constructor (e.g. vLLM's LLM, llama.cpp's Llama)."""
    tool_call_parser: str | None = None
    """How to read tool calls out of the model's text, by vLLM's parser names (``hermes``, ``llama3_json``,
    ``mistral``, ``qwen3_coder``, ...); local engines that parse tool calls use it."""
    chat_template_kwargs: dict[str, Any] = {}
    """Extra variables for the chat template (e.g. ``enable_thinking: false``); sent to vLLM servers too."""

    @field_validator("chat_template")
    @classmethod
    def _known_template(cls, value: str | None) -> str | None:
        return None if value is None else check_chat_template(value)

    @field_validator("torch_dtype_str")
    @classmethod
    def _normalise_dtype(cls, value: str) -> str:
        key = value.strip().lower().removeprefix("torch.")
        if key not in _DTYPES:
            raise ValueError(f"unknown dtype {value!r}: use one of float32, float16, bfloat16, float64, auto")
        return _DTYPES[key]
