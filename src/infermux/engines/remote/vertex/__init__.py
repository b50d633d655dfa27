"""GOOGLE_VERTEX: Vertex AI's OpenAI-compatible chat completions with Google OAuth (engine) and its batch
prediction jobs, Gemini requests in Cloud Storage (batches).

``infermux.engines.remote.vertex.GoogleVertexInferenceEngine`` stays importable from here
(the class lives in :mod:`.engine`, imported on first use).
"""

from infermux.engines.exports import engine_class_of

__all__ = ["GoogleVertexInferenceEngine"]

__getattr__ = engine_class_of(__name__, "GoogleVertexInferenceEngine")
