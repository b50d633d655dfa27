"""infermux: one interface to run LLM inference on many engines.

Start-up stays light: every name below is imported on first use, and engines import their libraries
only when built. Plugin authors subclass :class:`InferenceEngine`, declare :class:`Capabilities`, and
report a failed row as a :class:`RowError` (see docs/architecture.md).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_ERRORS = (
    "AuthenticationError",
    "ConfigError",
    "EngineUnavailableError",
    "ErrorKind",
    "InfermuxError",
    "InputError",
    "ModelNotFoundError",
    "OutputError",
    "RemoteError",
    "RowError",
    "UnsupportedParamError",
)

__all__ = [
    *_ERRORS,
    "BatchReport",
    "Capabilities",
    "ContentItem",
    "Conversation",
    "FinishReason",
    "GenerationParams",
    "GuidedDecodingParams",
    "InferenceConfig",
    "InferenceEngine",
    "InferenceEngineType",
    "Message",
    "ModelParams",
    "RemoteParams",
    "Role",
    "Usage",
    "Tool",
    "ToolCall",
    "__version__",
    "build_engine",
    "load_config",
]

_LAZY = {
    "Conversation": "infermux.types",
    "ContentItem": "infermux.types",
    "Message": "infermux.types",
    "Role": "infermux.types",
    "FinishReason": "infermux.types",
    "Usage": "infermux.types",
    "Tool": "infermux.types",
    "ToolCall": "infermux.types",
    "GenerationParams": "infermux.configs",
    "GuidedDecodingParams": "infermux.configs",
    "InferenceConfig": "infermux.configs",
    "InferenceEngineType": "infermux.configs",
    "ModelParams": "infermux.configs",
    "RemoteParams": "infermux.configs",
    "load_config": "infermux.configs",
    "build_engine": "infermux.engines.registry",
    "InferenceEngine": "infermux.engines.base",
    "Capabilities": "infermux.engines.capabilities",
    "BatchReport": "infermux.jobs.loop",
    **dict.fromkeys(_ERRORS, "infermux.errors"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'infermux' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
