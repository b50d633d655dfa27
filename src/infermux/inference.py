"""Engine classes under the names the SPEC uses, imported on first access.

``from infermux.inference import VLLMInferenceEngine`` imports vLLM's engine module only then.
"""

from __future__ import annotations

from typing import Any

from infermux.engines.registry import ENGINES, engine_class

_BY_CLASS = {spec.class_name: name for name, spec in ENGINES.items()}

__all__ = sorted([*_BY_CLASS, "InferenceEngine"])


def __getattr__(name: str) -> Any:
    if name == "InferenceEngine":
        from infermux.engines.base import InferenceEngine

        return InferenceEngine
    if name in _BY_CLASS:
        return engine_class(_BY_CLASS[name])
    raise AttributeError(f"module 'infermux.inference' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
