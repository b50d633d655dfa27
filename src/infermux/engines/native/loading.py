"""Loading a model and tokenizer for the NATIVE engine from :class:`ModelParams`.

Handles the embedded default alias, local folders, hub ids found in the local cache, ``.gguf`` files
(through transformers' GGUF support), dtype / device_map / attention settings, a chat template
override, LoRA adapters through peft, and bitsandbytes quantization where CUDA is present.
Imported only when a NATIVE engine is built (it imports torch and transformers).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from infermux.configs.model_params import _DTYPES as _DTYPE_SPELLINGS
from infermux.configs.model_params import ModelParams
from infermux.errors import ConfigError, EngineUnavailableError, ModelNotFoundError, install_hint
from infermux.models import resolve_model_name
from infermux.templates import resolve_chat_template

__all__ = ["is_vision_model", "load_model", "load_processor", "load_tokenizer", "torch_dtype"]

logger = logging.getLogger("infermux.engines.native.engine")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
# model_kwargs the engine reads itself rather than passing to from_pretrained.
_QUANT_KEYS = ("load_in_4bit", "load_in_8bit")


def torch_dtype(params: ModelParams) -> Any:
    """The dtype to load with: ``model_kwargs`` ``torch_dtype``/``dtype`` win over ``torch_dtype_str``."""
    value = params.model_kwargs.get("dtype", params.model_kwargs.get("torch_dtype", params.torch_dtype_str))
    if isinstance(value, torch.dtype) or value == "auto":
        return value
    name = _DTYPE_SPELLINGS.get(str(value).strip().lower().removeprefix("torch."))
    if name is None:
        raise ConfigError(f"unknown dtype {value!r} in model.model_kwargs: use float32, float16, bfloat16 or auto")
    return "auto" if name == "auto" else _DTYPES[name]


def _source(params: ModelParams) -> tuple[str, dict[str, Any]]:
    """Where to load from, and the extra from_pretrained arguments that implies (``gguf_file``)."""
    name = resolve_model_name(params.model_name, "NATIVE")
    path = Path(name).expanduser()
    if name.lower().endswith(".gguf"):
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {name}. Check model.model_name.")
        return str(path.parent), {"gguf_file": path.name}
    if path.exists() and not path.is_dir():
        raise ModelNotFoundError(
            f"{name} is a file, not a model folder; NATIVE loads a Hugging Face folder, a hub id or a .gguf file."
        )
    return (str(path) if path.is_dir() else name), {}


def _hub_error(name: str, what: str, exc: Exception) -> ModelNotFoundError:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}
    hint = (
        "HF_HUB_OFFLINE is set, so only local folders and the local Hugging Face cache are searched."
        if offline
        else "It is neither a local folder nor reachable on the Hugging Face hub."
    )
    return ModelNotFoundError(
        f"Cannot load the {what} '{name}': {hint} Download it first (e.g. `hf download {name}`) or point "
        f"model.model_name at a local folder or .gguf file. ({type(exc).__name__}: {exc})"
    )


def is_vision_model(params: ModelParams) -> bool:
    """Whether the model is an image-text-to-text model (its config has a vision tower and transformers maps
    it to ``AutoModelForImageTextToText``): NATIVE then loads it with its processor and reads images."""
    source, extra = _source(params)
    if extra:  # a .gguf file: text only through transformers
        return False
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=params.trust_remote_code)
    except (OSError, ValueError):
        return False  # load_model explains a missing model
    has_vision = getattr(config, "vision_config", None) is not None
    return has_vision and getattr(config, "model_type", None) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


def load_processor(params: ModelParams) -> Any:
    """The model's own processor (``AutoProcessor``: image processor, tokenizer, chat template)."""
    from transformers import AutoProcessor

    source, _ = _source(params)
    try:
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=params.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise _hub_error(source, "processor", exc) from exc
    if getattr(processor, "image_processor", None) is None:
        raise ModelNotFoundError(
            f"'{source}' looks like a vision model but its processor has no image processor; NATIVE needs the "
            "model's preprocessor_config.json / processor_config.json beside its weights."
        )
    return processor


def load_tokenizer(params: ModelParams, fallback_template: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer, left-padded (batched decoder-only generation needs it), with a pad token;
    ``fallback_template`` is the chat template when neither the config nor the tokenizer has one (a vision
    model's processor may carry it)."""
    extra: dict[str, Any] = {}
    if params.tokenizer_name:
        source = str(resolve_model_name(params.tokenizer_name, "NATIVE"))
    else:
        source, extra = _source(params)
    kwargs: dict[str, Any] = {"trust_remote_code": params.trust_remote_code, **extra}
    if params.model_revision:
        kwargs["revision"] = params.model_revision
    kwargs.update(params.tokenizer_kwargs)
    kwargs["padding_side"] = "left"
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise _hub_error(source, "tokenizer", exc) from exc
    tokenizer.padding_side = "left"
    if params.tokenizer_pad_token:
        tokenizer.pad_token = params.tokenizer_pad_token
    elif tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if params.model_max_length:
        tokenizer.model_max_length = params.model_max_length
    template = resolve_chat_template(params.chat_template)  # None: unset or `auto` (the tokenizer's own)
    if template is not None:
        tokenizer.chat_template = template
    if not getattr(tokenizer, "chat_template", None) and fallback_template:
        tokenizer.chat_template = fallback_template
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"The tokenizer of '{source}' has no chat template. Set model.chat_template to a built-in "
            "template name (e.g. chat_ml), a Jinja template, or the path of a .jinja file."
        )
    return tokenizer


def _quantization(params: ModelParams) -> Any:
    wanted = [key for key in _QUANT_KEYS if params.model_kwargs.get(key)]
    if not wanted:
        return None
    if not torch.cuda.is_available():
        raise EngineUnavailableError(
            f"model.model_kwargs.{wanted[0]} quantizes through bitsandbytes, which needs a CUDA GPU; none "
            "is available here. Remove it (use torch_dtype_str: bfloat16 to halve memory on CPU), or run on "
            f"a GPU machine with `{install_hint(package='bitsandbytes')}`."
        )
    try:
        from transformers import BitsAndBytesConfig
    except ImportError as exc:  # pragma: no cover - transformers always has it
        raise EngineUnavailableError(
            "bitsandbytes quantization needs: " + install_hint(package="bitsandbytes")
        ) from exc
    return BitsAndBytesConfig(
        load_in_4bit=bool(params.model_kwargs.get("load_in_4bit")),
        load_in_8bit=bool(params.model_kwargs.get("load_in_8bit")),
    )


def _device_map(params: ModelParams) -> Any:
    device_map = params.model_kwargs.get("device_map", params.device_map)
    if device_map == "auto" and not torch.cuda.is_available():
        return None  # CPU only: plain loading, no accelerate dispatch hooks
    return device_map


def load_model(params: ModelParams, *, vision: bool = False) -> Any:
    """The causal LM (``vision``: the image-text-to-text model) in eval mode, with the adapter applied when
    ``adapter_model`` is set."""
    source, extra = _source(params)
    kwargs: dict[str, Any] = {
        k: v for k, v in params.model_kwargs.items() if k not in {*_QUANT_KEYS, "torch_dtype", "dtype", "device_map"}
    }
    kwargs.update(extra)
    kwargs.update(dtype=torch_dtype(params), trust_remote_code=params.trust_remote_code)
    if params.model_revision:
        kwargs["revision"] = params.model_revision
    if params.attn_implementation:
        kwargs["attn_implementation"] = params.attn_implementation
    quantization = _quantization(params)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    device_map = _device_map(params)
    if device_map is not None:
        kwargs["device_map"] = device_map
    auto: Any = AutoModelForCausalLM
    if vision:
        from transformers import AutoModelForImageTextToText

        auto = AutoModelForImageTextToText
    try:
        if params.load_pretrained_weights:
            model = auto.from_pretrained(source, **kwargs)
        else:
            config = AutoConfig.from_pretrained(source, trust_remote_code=params.trust_remote_code, **extra)
            model = auto.from_config(config, dtype=kwargs["dtype"])
    except (OSError, ValueError) as exc:
        if "does not appear to have" in str(exc) or isinstance(exc, OSError):
            raise _hub_error(source, "model", exc) from exc
        raise
    if params.adapter_model:
        model = _apply_adapter(model, params.adapter_model, merge=quantization is None)
    if params.compile:
        model.forward = torch.compile(model.forward)
    return model.eval()


def _apply_adapter(model: Any, adapter: str, *, merge: bool) -> Any:
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise EngineUnavailableError(
            f"model.adapter_model needs peft: {install_hint('native')} (or {install_hint(package='peft')})."
        ) from exc
    if not Path(adapter).expanduser().is_dir() and "/" not in adapter:
        raise ModelNotFoundError(f"LoRA adapter folder not found: {adapter}. Check model.adapter_model.")
    try:
        peft_model = PeftModel.from_pretrained(model, str(Path(adapter).expanduser()))
    except (OSError, ValueError) as exc:
        raise _hub_error(adapter, "adapter", exc) from exc
    # Merging folds the low-rank update into the weights: same answers, no per-step adapter cost.
    return peft_model.merge_and_unload() if merge else peft_model
