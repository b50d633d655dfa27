"""One identity row per engine: name, ``"module:Class"``, pip extra, local or remote, batch client.

The rows are the only place an engine's identity is written (a class's ``engine_type`` is read from its row,
:mod:`infermux.engines.identity`; the registry never writes to a class): "which extra installs it?", "local or
remote?" and "which provider batch API?" are read here (by the CLI, ``infermux batch`` and the docs).
What an HTTP engine's provider is (URL, key, workers) is its class's
:class:`~infermux.engines.remote.base.ProviderInfo`; BEDROCK is remote but not HTTP (boto3), so code
that needs an HTTP worker budget asks ``issubclass(cls, RemoteEngine)``. Classes are imported only
when an engine is built. Third-party packages add engines through the ``infermux.engines`` entry-point
group (:func:`~infermux.configs.engine_type.plugin_targets`): the entry's name is the engine name used
in configs, its value ``"package.module:Class"``.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from infermux.configs.engine_type import ENTRY_POINT_GROUP, engine_name, plugin_targets, unknown_engine
from infermux.configs.engine_type import InferenceEngineType as E
from infermux.engines.remote.openai.providers import PROVIDERS
from infermux.errors import AuthenticationError, ConfigError, EngineUnavailableError, install_hint

if TYPE_CHECKING:
    from infermux.configs.inference_config import InferenceConfig
    from infermux.engines.base import InferenceEngine

__all__ = [
    "BATCH_OPERATIONS",
    "ENGINES",
    "ENTRY_POINT_GROUP",
    "EngineSpec",
    "batch_engines",
    "batch_operations",
    "build_engine",
    "engine_class",
    "engine_spec",
    "engine_specs",
    "is_available",
    "registered_name",
]

Kind = Literal["local", "remote"]
#: What each provider batch client offers (``infermux batch ...``): OpenAI's Batch API (files +
#: batches), Anthropic's Message Batches, Together's Batch API (all three can also cancel a job's
#: batches and list an account's), Fireworks' batch inference jobs (no cancel call), the Gemini
#: API's Batch Mode, Vertex AI's batch prediction jobs (files in Cloud Storage) and Bedrock's model
#: invocation jobs (files in S3).
BATCH_OPERATIONS: dict[str, frozenset[str]] = {
    "openai": frozenset({"submit", "status", "fetch", "cancel", "list"}),
    "anthropic": frozenset({"submit", "status", "fetch", "cancel", "list"}),
    "together": frozenset({"submit", "status", "fetch", "cancel", "list"}),
    "fireworks": frozenset({"submit", "status", "fetch", "list"}),
    "gemini": frozenset({"submit", "status", "fetch", "cancel", "list"}),
    "vertex": frozenset({"submit", "status", "fetch", "cancel", "list"}),
    "bedrock": frozenset({"submit", "status", "fetch", "cancel", "list"}),
}


@dataclass(frozen=True)
class EngineSpec:
    name: str
    target: str  # "module:Class"
    extra: str | None = None  # pip extra that installs the requirements
    requires: tuple[str, ...] = ()  # importable modules the engine needs
    remote: bool = False  # answers come from a service over the network (else: a model loaded here)
    batch: str | None = None  # its provider batch client (a key of BATCH_OPERATIONS), if it has one
    plugin: bool = False  # registered through an entry point (its row says no more than name and target)
    runs_on: str = ""  # what answers, in a few words (the README's engine table)

    @property
    def class_name(self) -> str:
        return self.target.split(":", 1)[1]

    @property
    def kind(self) -> Kind:
        return "remote" if self.remote else "local"


_R = "infermux.engines.remote."

_OWN, _CLOUD = "your own server", "cloud APIs"

ENGINES: dict[str, EngineSpec] = {
    spec.name: spec
    for spec in (
        EngineSpec(E.NATIVE.value, "infermux.engines.native.engine:NativeTextInferenceEngine", "native", ("torch", "transformers"),
                   runs_on="transformers (CPU/GPU)"),
        EngineSpec(E.VLLM.value, "infermux.engines.vllm.engine:VLLMInferenceEngine", "vllm", ("vllm",),
                   runs_on="vLLM (GPU; CPU build works too)"),
        EngineSpec(E.LLAMACPP.value, "infermux.engines.llamacpp.engine:LlamaCppInferenceEngine", "llamacpp", ("llama_cpp",),
                   runs_on="llama.cpp (GGUF)"),
        EngineSpec(E.REMOTE.value, _R + "openai.engine:RemoteInferenceEngine", remote=True, batch="openai", runs_on=_OWN),
        EngineSpec(E.REMOTE_VLLM.value, _R + "openai.vllm:RemoteVLLMInferenceEngine", remote=True, batch="openai",
                   runs_on=_OWN),
        # Hosted OpenAI-compatible providers: one row each in remote/openai/providers.py.
        *(EngineSpec(p.engine.value, p.target, remote=True, batch=p.batch if p.batch_api else None, runs_on=_CLOUD)
          for p in PROVIDERS.values()),
        EngineSpec(E.ANTHROPIC.value, _R + "anthropic.engine:AnthropicInferenceEngine", remote=True, batch="anthropic",
                   runs_on=_CLOUD),
        EngineSpec(E.GOOGLE_GEMINI.value, _R + "gemini.engine:GoogleGeminiInferenceEngine", remote=True, batch="gemini",
                   runs_on=_CLOUD),
        EngineSpec(E.GOOGLE_VERTEX.value, _R + "vertex.engine:GoogleVertexInferenceEngine", "vertex", ("google.auth",), remote=True,
                   batch="vertex", runs_on="Vertex AI"),
        EngineSpec(E.BEDROCK.value, _R + "bedrock.engine:BedrockInferenceEngine", "bedrock", ("boto3",), remote=True,
                   batch="bedrock", runs_on="AWS Bedrock"),
        EngineSpec(E.SGLANG.value, _R + "sglang:SGLangInferenceEngine", "native", ("transformers",), remote=True,
                   runs_on=_OWN),
    )
}  # fmt: skip


def _plugin_specs() -> dict[str, EngineSpec]:
    return {name: EngineSpec(name, target, plugin=True) for name, target in plugin_targets().items()}


def engine_specs() -> dict[str, EngineSpec]:
    """Built-in engines followed by those registered by plugins."""
    return {**ENGINES, **_plugin_specs()}


def engine_spec(name: str | E) -> EngineSpec:
    """The identity row of the engine called ``name`` (a member, its name or value, or a plugin's name)."""
    key = name.value if isinstance(name, E) else str(name).strip().upper()
    if key in E.__members__:
        key = E[key].value  # an alias such as GEMINI names its member's engine
    specs = engine_specs()
    if key not in specs:
        raise ConfigError(unknown_engine(name, specs))
    return specs[key]


def registered_name(cls: type) -> E | str | None:
    """The engine name of the row whose target is ``cls`` or its nearest base class (a built-in engine's
    member, a plugin's name), or None: what ``engine_type`` reads (:mod:`infermux.engines.identity`)."""
    names = {spec.target: spec.name for spec in engine_specs().values()}
    for klass in cls.__mro__:
        name = names.get(f"{klass.__module__}:{klass.__qualname__}")
        if name is not None:
            return E(name) if name in E.__members__ else name
    return None


def _module_present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def is_available(name: str | E) -> bool:
    """Whether the engine's optional dependencies are installed (without importing them)."""
    return all(_module_present(m) for m in engine_spec(name).requires)


def engine_class(name: str | E) -> type[InferenceEngine]:
    """Import and return the engine class, or say which extra to install."""
    spec = engine_spec(name)
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
    if config.remote_params is not None and config.remote_params.endpoints:
        from infermux.engines.remote.base import RemoteEngine

        if not issubclass(cls, RemoteEngine):
            raise ConfigError(
                f"remote_params.endpoints: {engine_name(config.resolved_engine())} does not send its requests "
                "through infermux's HTTP transport, so it cannot spread them over several servers; use api_url."
            )
    engine = cls(
        config.model,
        generation_params=config.generation,
        remote_params=config.remote_params,
        strict=config.strict,
        **kwargs,
    )
    engine.check_ready()
    if config.fallbacks:
        return _with_fallbacks(engine, config)
    return engine


def _with_fallbacks(primary: InferenceEngine, config: InferenceConfig) -> InferenceEngine:
    """``primary`` followed by the engines of ``config.fallbacks`` (:mod:`infermux.engines.fallback`)."""
    from infermux.engines.fallback import FallbackEngine

    engines = []
    for i, item in enumerate(config.fallbacks):
        sub = config.model_copy(
            update={
                "engine": item.engine,
                "model": item.model,
                "remote_params": item.remote_params,
                "generation": item.generation or config.generation,
                "fallbacks": [],
            }
        )
        try:
            engines.append((build_engine(sub), item.generation))
        except (ConfigError, AuthenticationError) as exc:
            raise type(exc)(f"fallbacks[{i}] ({engine_name(item.engine)}): {exc}") from None
    return FallbackEngine(primary, engines, configs=config.fallbacks)


def batch_engines(operation: str = "submit") -> str:
    """The built-in engines whose batch client offers ``operation``, for messages ("OPENAI, ANTHROPIC or ...")."""
    names = [spec.name for spec in ENGINES.values() if spec.batch and operation in BATCH_OPERATIONS[spec.batch]]
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else "".join(names)


def batch_operations(engine: InferenceEngine) -> frozenset[str]:
    """What ``infermux batch`` can do with ``engine`` (``submit``, ``status``, ``fetch``, ``cancel``,
    ``list``): what its batch client (:meth:`~infermux.engines.base.InferenceEngine.batch_client`)
    offers; nothing for an engine without one. A built-in engine's row names the same operations
    (:data:`BATCH_OPERATIONS`, for tables that build no engine); a test keeps them equal."""
    client = engine.batch_client()
    if client is None:
        return frozenset()
    ops = {"submit", "status", "fetch"}
    ops |= {"cancel"} if client.can_cancel else set()
    ops |= {"list"} if client.can_list else set()
    return frozenset(ops)
