"""Engine name → ``"module:Class"``, imported only when an engine is built.

Third-party packages add engines through the ``infermux.engines`` entry-point group: the entry's name
is the engine name used in configs, its value ``"package.module:Class"``.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from infermux.configs.engine_type import InferenceEngineType as E
from infermux.engines.remote.openai.providers import PROVIDERS
from infermux.errors import ConfigError, EngineUnavailableError, install_hint

if TYPE_CHECKING:
    from infermux.configs.inference_config import InferenceConfig
    from infermux.engines.base import InferenceEngine

__all__ = ["ENGINES", "EngineSpec", "build_engine", "engine_class", "engine_specs", "is_available"]

ENTRY_POINT_GROUP = "infermux.engines"


@dataclass(frozen=True)
class EngineSpec:
    name: str
    target: str  # "module:Class"
    extra: str | None = None  # pip extra that installs the requirements
    requires: tuple[str, ...] = ()  # importable modules the engine needs
    remote: bool = False

    @property
    def class_name(self) -> str:
        return self.target.split(":", 1)[1]


_R = "infermux.engines.remote."

ENGINES: dict[str, EngineSpec] = {
    spec.name: spec
    for spec in (
        EngineSpec(E.NATIVE.value, "infermux.engines.native.engine:NativeTextInferenceEngine", "native", ("torch", "transformers")),
        EngineSpec(E.VLLM.value, "infermux.engines.vllm.engine:VLLMInferenceEngine", "vllm", ("vllm",)),
        EngineSpec(E.LLAMACPP.value, "infermux.engines.llamacpp.engine:LlamaCppInferenceEngine", "llamacpp", ("llama_cpp",)),
        EngineSpec(E.REMOTE.value, _R + "openai.engine:RemoteInferenceEngine", remote=True),
        EngineSpec(E.REMOTE_VLLM.value, _R + "openai.vllm:RemoteVLLMInferenceEngine", remote=True),
        # Hosted OpenAI-compatible providers: one row each in remote/openai/providers.py.
        *(EngineSpec(p.engine.value, p.target, remote=True) for p in PROVIDERS.values()),
        EngineSpec(E.ANTHROPIC.value, _R + "anthropic.engine:AnthropicInferenceEngine", remote=True),
        EngineSpec(E.GOOGLE_GEMINI.value, _R + "gemini.engine:GoogleGeminiInferenceEngine", remote=True),
        EngineSpec(E.GOOGLE_VERTEX.value, _R + "vertex:GoogleVertexInferenceEngine", "vertex", ("google.auth",), remote=True),
        EngineSpec(E.BEDROCK.value, _R + "bedrock.engine:BedrockInferenceEngine", "bedrock", ("boto3",), remote=True),
        EngineSpec(E.SGLANG.value, _R + "sglang:SGLangInferenceEngine", "native", ("transformers",), remote=True),
    )
}  # fmt: skip


@lru_cache(maxsize=1)
def _plugin_specs() -> dict[str, EngineSpec]:
    found: dict[str, EngineSpec] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in ENGINES:
            found[ep.name] = EngineSpec(ep.name, ep.value)
    return found


def engine_specs() -> dict[str, EngineSpec]:
    """Built-in engines followed by those registered by plugins."""
    return {**ENGINES, **_plugin_specs()}


def _spec(name: str | E) -> EngineSpec:
    key = name.value if isinstance(name, E) else str(name).strip().upper()
    if key in E.__members__:
        key = E[key].value  # an alias such as GEMINI names its member's engine
    specs = engine_specs()
    if key not in specs:
        raise ConfigError(f"unknown engine {name!r}. Known engines: {', '.join(specs)}.")
    return specs[key]


def _module_present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def is_available(name: str | E) -> bool:
    """Whether the engine's optional dependencies are installed (without importing them)."""
    return all(_module_present(m) for m in _spec(name).requires)


def engine_class(name: str | E) -> type[InferenceEngine]:
    """Import and return the engine class, or say which extra to install."""
    spec = _spec(name)
    missing = [m for m in spec.requires if not _module_present(m)]
    if missing:
        extra = install_hint(spec.extra, missing[0])
        raise EngineUnavailableError(
            f"The {spec.name} engine needs {', '.join(missing)}, which is not installed. Install it with: {extra}"
        )
    module_name, class_name = spec.target.split(":", 1)
    module = importlib.import_module(module_name)
    cls: type[InferenceEngine] = getattr(module, class_name)
    return cls


def build_engine(config: InferenceConfig, **kwargs: Any) -> InferenceEngine:
    """Construct the engine a config asks for; raise ``ConfigError`` if it cannot run a job as configured."""
    cls = engine_class(config.resolved_engine())
    engine = cls(
        config.model,
        generation_params=config.generation,
        remote_params=config.remote_params,
        strict=config.strict,
        **kwargs,
    )
    engine.check_ready()
    return engine
