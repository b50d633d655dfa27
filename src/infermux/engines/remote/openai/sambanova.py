"""SAMBANOVA: SambaNova Cloud chat completions (OpenAI-compatible)."""

from __future__ import annotations

from typing import ClassVar

from infermux.configs.engine_type import InferenceEngineType
from infermux.engines.capabilities import Capabilities
from infermux.engines.remote.openai.engine import RemoteInferenceEngine

__all__ = ["SambanovaInferenceEngine"]


class SambanovaInferenceEngine(RemoteInferenceEngine):
    """SambaNova Cloud (``SAMBANOVA_API_KEY``). Its API documents temperature, top_p and stop only;
    free-tier rate limits are low, hence 8 workers by default."""

    engine_type = InferenceEngineType.SAMBANOVA
    capabilities: ClassVar[Capabilities] = Capabilities(
        generation_params=frozenset({"temperature", "top_p", "stop_strings"}), images=True, streaming=True
    )
    default_api_url = "https://api.sambanova.ai/v1"
    api_key_env = "SAMBANOVA_API_KEY"
    requires_api_key = True
    default_num_workers = 8
    provider = "SambaNova"
