"""TOGETHER: Together AI's serverless chat completions (OpenAI-compatible)."""

from __future__ import annotations

from typing import ClassVar

from infermux.configs.engine_type import InferenceEngineType
from infermux.engines.capabilities import Capabilities
from infermux.engines.remote.openai.engine import OPENAI_PARAMS, RemoteInferenceEngine

__all__ = ["TogetherInferenceEngine"]


class TogetherInferenceEngine(RemoteInferenceEngine):
    """Together AI (``TOGETHER_API_KEY``); also takes ``min_p`` and JSON-schema output."""

    engine_type = InferenceEngineType.TOGETHER
    capabilities: ClassVar[Capabilities] = Capabilities(
        generation_params=OPENAI_PARAMS | {"min_p"},
        guided_decoding=frozenset({"json"}),
        images=True,
        streaming=True,
    )
    default_api_url = "https://api.together.xyz/v1"
    api_key_env = "TOGETHER_API_KEY"
    requires_api_key = True
    default_num_workers = 20
    provider = "Together AI"
