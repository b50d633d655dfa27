"""VLLM model loading: what ``vllm.LLM`` loads (the model, a GGUF, a LoRA adapter) and its keyword arguments."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from infermux.configs.model_params import ModelParams
from infermux.errors import ConfigError, EngineUnavailableError, ModelNotFoundError
from infermux.models.default import DEFAULT_MODEL_ALIAS

__all__ = ["CPU_KV_CACHE_BYTES", "llm_kwargs", "local_adapter", "lora_rank", "resolve_model"]

logger = logging.getLogger("infermux.engines.vllm")

#: KV cache on CPU when neither the user nor ``VLLM_CPU_KVCACHE_SPACE`` sizes it.
CPU_KV_CACHE_BYTES = 2 * 1024**3
# The ranks vLLM's LoRA kernels are built for; an adapter's rank is rounded up to the next one.
_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def lora_rank(adapter: str) -> int:
    """The LoRA rank ``r`` of ``adapter`` (a local folder, or a hub id already in the local cache)."""
    config_file = Path(adapter).expanduser() / "adapter_config.json"
    if not config_file.is_file():
        if Path(adapter).expanduser().exists():
            raise ModelNotFoundError(
                f"{adapter}: not a LoRA adapter folder (no adapter_config.json). "
                "Point model.adapter_model at the folder peft's save_pretrained wrote."
            )
        config_file = _hub_file(adapter, "adapter_config.json")
    try:
        rank = json.loads(config_file.read_text(encoding="utf-8"))["r"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{config_file}: cannot read the LoRA rank 'r' ({exc}).") from exc
    if not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"{config_file}: LoRA rank 'r' must be a positive integer, got {rank!r}.")
    return rank


def _hub_file(repo_id: str, filename: str) -> Path:
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id, filename))
    except Exception as exc:
        raise ModelNotFoundError(
            f"LoRA adapter {repo_id!r} is neither a local folder nor in the Hugging Face cache, and could not "
            f"be downloaded ({type(exc).__name__}: {exc}). Download it first or give a local path."
        ) from exc


def _vllm_lora_rank(rank: int) -> int:
    for allowed in _LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ConfigError(f"LoRA rank {rank} is larger than vLLM supports (at most {_LORA_RANKS[-1]}).")


def llm_kwargs(model_params: ModelParams, model: str, *, on_gpu: bool) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM``: derived from the model fields, then ``model_kwargs`` on top."""
    kwargs: dict[str, Any] = {"model": model, "trust_remote_code": model_params.trust_remote_code}
    # ModelParams defaults to float32 (Oumi's default); unless the user asked for a dtype, let vLLM use
    # the checkpoint's own (bf16/fp16 models would otherwise run at half speed and twice the memory).
    if "torch_dtype_str" in model_params.model_fields_set:
        kwargs["dtype"] = model_params.torch_dtype_str
    if model_params.tokenizer_name:
        kwargs["tokenizer"] = model_params.tokenizer_name
    if model_params.model_revision:
        kwargs["revision"] = model_params.model_revision
    if model_params.model_max_length:
        kwargs["max_model_len"] = model_params.model_max_length
    if model_params.adapter_model:
        kwargs["enable_lora"] = True
        kwargs["max_lora_rank"] = _vllm_lora_rank(lora_rank(model_params.adapter_model))
    if not on_gpu:
        kwargs["enforce_eager"] = True
        sized = {"kv_cache_memory_bytes", "gpu_memory_utilization"} & set(model_params.model_kwargs)
        if not sized and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    kwargs.update(model_params.model_kwargs)
    return kwargs


def _vllm_reads_gguf() -> bool:
    try:
        from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
    except ImportError:
        return False
    return "gguf" in QUANTIZATION_METHODS


def resolve_model(model_params: ModelParams, engine: object) -> str:
    """What ``vllm.LLM`` should load for ``model_params.model_name``.

    The default model's alias, and its packaged GGUF, map to its derived Hugging Face folder. Another
    ``.gguf`` file is passed through (with ``tokenizer_name``) when the installed vLLM reads GGUF, and is
    refused with a clear message when it does not (support was dropped from recent releases).
    """
    from infermux.models.default import gguf_path, resolve_model_name

    model = resolve_model_name(model_params.model_name, engine)
    if not model.endswith(".gguf"):
        return model
    try:
        if Path(model).expanduser().resolve() == gguf_path().resolve():
            return resolve_model_name(DEFAULT_MODEL_ALIAS, engine)
    except EngineUnavailableError:
        pass
    if not _vllm_reads_gguf():
        raise ConfigError(
            f"model.model_name={model!r}: the installed vLLM cannot load GGUF files. Use the original Hugging "
            "Face checkpoint (a folder or hub id) with the VLLM engine, or run the GGUF with engine: LLAMACPP."
        )
    if not model_params.tokenizer_name:
        logger.warning(
            "%s is a GGUF file and no tokenizer_name is set: vLLM will convert the GGUF tokenizer, which is "
            "slow and not always faithful. Set model.tokenizer_name to the base model's tokenizer.",
            model,
        )
    return model


def local_adapter(adapter: str) -> str:
    path = Path(adapter).expanduser()
    if path.is_dir():
        return str(path)
    return str(_hub_file(adapter, "adapter_config.json").parent)
