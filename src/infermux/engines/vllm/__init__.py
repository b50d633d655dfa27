"""VLLM: local inference through vLLM's offline ``LLM`` (loading, continuous feeding, streaming, tool parsers).

``infermux.engines.vllm.VLLMInferenceEngine`` stays importable from here (the class lives in :mod:`.engine`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["VLLMInferenceEngine"]


def __getattr__(name: str) -> Any:
    if name == "VLLMInferenceEngine":  # imported on first use: the package itself stays light
        from infermux.engines.vllm.engine import VLLMInferenceEngine

        return VLLMInferenceEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
