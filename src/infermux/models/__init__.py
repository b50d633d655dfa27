"""Models infermux knows by name: the embedded default (SmolLM2-135M-Instruct) and its aliases.

Light module: nothing heavy is imported until a model is actually resolved.
"""

from __future__ import annotations

from infermux.models.default import (
    DEFAULT_MODEL_ALIAS,
    cache_dir,
    gguf_path,
    hf_folder,
    is_default_model,
    resolve_model_name,
)

__all__ = [
    "DEFAULT_MODEL_ALIAS",
    "cache_dir",
    "gguf_path",
    "hf_folder",
    "is_default_model",
    "resolve_model_name",
]
