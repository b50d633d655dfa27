"""BEDROCK: Amazon Bedrock's Converse API through boto3 (engine) and its tool and reasoning blocks (tools).

``infermux.engines.remote.bedrock.BedrockInferenceEngine`` stays importable from here
(the class lives in :mod:`.engine`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["BedrockInferenceEngine"]


def __getattr__(name: str) -> Any:
    if name == "BedrockInferenceEngine":  # imported on first use: the package itself stays light
        from infermux.engines.remote.bedrock.engine import BedrockInferenceEngine

        return BedrockInferenceEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
