"""GOOGLE_GEMINI: the Gemini API's generateContent (engine) and its function calling and thoughts (tools).

``infermux.engines.remote.gemini.GoogleGeminiInferenceEngine`` stays importable from here
(the class lives in :mod:`.engine`, imported on first use).
"""

from infermux.engines.exports import engine_class_of

__all__ = ["GoogleGeminiInferenceEngine"]

__getattr__ = engine_class_of(__name__, "GoogleGeminiInferenceEngine")
