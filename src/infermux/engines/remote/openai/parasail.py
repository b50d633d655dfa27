"""PARASAIL: Parasail.io's serverless chat completions (OpenAI-compatible)."""

from __future__ import annotations

from typing import ClassVar

from infermux.configs.engine_type import InferenceEngineType
from infermux.engines.capabilities import Capabilities
from infermux.engines.remote.openai.engine import OPENAI_PARAMS, RemoteInferenceEngine

__all__ = ["ParasailInferenceEngine"]


class ParasailInferenceEngine(RemoteInferenceEngine):
    """Parasail.io (``PARASAIL_API_KEY``)."""

    engine_type = InferenceEngineType.PARASAIL
    capabilities: ClassVar[Capabilities] = Capabilities(
        generation_params=OPENAI_PARAMS, guided_decoding=frozenset({"json"}), images=True, streaming=True
    )
    default_api_url = "https://api.parasail.io/v1"
    api_key_env = "PARASAIL_API_KEY"
    requires_api_key = True
    default_num_workers = 20
    provider = "Parasail"
