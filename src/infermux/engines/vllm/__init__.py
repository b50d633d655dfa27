"""VLLM: local inference through vLLM's offline ``LLM`` (loading, continuous feeding, streaming, tool parsers).

``infermux.engines.vllm.VLLMInferenceEngine`` stays importable from here
(the class lives in :mod:`.engine`, imported on first use).
"""

from infermux.engines.exports import engine_class_of

__all__ = ["VLLMInferenceEngine"]

__getattr__ = engine_class_of(__name__, "VLLMInferenceEngine")
