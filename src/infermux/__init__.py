"""infermux: one interface to run LLM inference on many engines.

Start-up stays light: engines and their libraries are imported only when used.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "ContentItem",
    "Conversation",
    "GenerationParams",
    "GuidedDecodingParams",
    "InferenceConfig",
    "InferenceEngineType",
    "Message",
    "ModelParams",
    "RemoteParams",
    "Role",
    "__version__",
    "build_engine",
    "load_config",
]

_LAZY = {
    "Conversation": "infermux.types",
    "ContentItem": "infermux.types",
    "Message": "infermux.types",
    "Role": "infermux.types",
    "GenerationParams": "infermux.configs",
    "GuidedDecodingParams": "infermux.configs",
    "InferenceConfig": "infermux.configs",
    "InferenceEngineType": "infermux.configs",
    "ModelParams": "infermux.configs",
    "RemoteParams": "infermux.configs",
    "load_config": "infermux.configs",
    "build_engine": "infermux.engines.registry",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'infermux' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
