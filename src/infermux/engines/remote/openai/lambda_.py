"""LAMBDA: the Lambda Inference API (OpenAI-compatible)."""

from __future__ import annotations

from typing import ClassVar

from infermux.configs.engine_type import InferenceEngineType
from infermux.engines.capabilities import Capabilities
from infermux.engines.remote.openai.engine import OPENAI_PARAMS, RemoteInferenceEngine

__all__ = ["LambdaInferenceEngine"]


class LambdaInferenceEngine(RemoteInferenceEngine):
    """Lambda's hosted models (``LAMBDA_API_KEY``). Lambda places no rate limit, so 20 workers by default."""

    engine_type = InferenceEngineType.LAMBDA
    capabilities: ClassVar[Capabilities] = Capabilities(
        generation_params=OPENAI_PARAMS, guided_decoding=frozenset({"json"}), images=True, streaming=True
    )
    default_api_url = "https://api.lambda.ai/v1"
    api_key_env = "LAMBDA_API_KEY"
    requires_api_key = True
    default_num_workers = 20
    provider = "Lambda"
