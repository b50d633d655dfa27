"""GOOGLE_GEMINI: the Gemini API's generateContent (engine) and its function calling and thoughts (tools).

``infermux.engines.remote.gemini.GoogleGeminiInferenceEngine`` stays importable from here
(the class lives in :mod:`.engine`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["GoogleGeminiInferenceEngine"]


def __getattr__(name: str) -> Any:
    if name == "GoogleGeminiInferenceEngine":  # imported on first use: the package itself stays light
        from infermux.engines.remote.gemini.engine import GoogleGeminiInferenceEngine

        return GoogleGeminiInferenceEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
