"""ANTHROPIC: the Messages API (engine), tools and thinking (tools), Message Batches (batches),
per-model rules for Claude (models).

``infermux.engines.remote.anthropic.AnthropicInferenceEngine`` stays importable from here
(the class lives in :mod:`.engine`, imported on first use).
"""

from infermux.engines.exports import engine_class_of

__all__ = ["AnthropicInferenceEngine"]

__getattr__ = engine_class_of(__name__, "AnthropicInferenceEngine")
