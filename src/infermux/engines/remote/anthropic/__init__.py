"""ANTHROPIC: the Messages API (engine), tools and thinking (tools), Message Batches (batches),
per-model rules for Claude (models).

``infermux.engines.remote.anthropic.AnthropicInferenceEngine`` stays importable from here
(the class lives in :mod:`.engine`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["AnthropicInferenceEngine"]


def __getattr__(name: str) -> Any:
    if name == "AnthropicInferenceEngine":  # imported on first use: the package itself stays light
        from infermux.engines.remote.anthropic.engine import AnthropicInferenceEngine

        return AnthropicInferenceEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
