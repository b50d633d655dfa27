"""DEEPSEEK: the DeepSeek platform's chat completions (OpenAI-compatible).

``deepseek-reasoner`` returns its chain of thought as ``reasoning_content``, kept in the answer's
metadata (and never sent back in later turns, as DeepSeek requires). DeepSeek's JSON mode takes no
schema, so guided decoding is not offered rather than faked.
"""

from __future__ import annotations

from typing import ClassVar

from infermux.configs.engine_type import InferenceEngineType
from infermux.engines.capabilities import Capabilities
from infermux.engines.remote.openai.engine import RemoteInferenceEngine

__all__ = ["DeepSeekInferenceEngine"]


class DeepSeekInferenceEngine(RemoteInferenceEngine):
    """DeepSeek (``DEEPSEEK_API_KEY``)."""

    engine_type = InferenceEngineType.DEEPSEEK
    capabilities: ClassVar[Capabilities] = Capabilities(
        generation_params=frozenset({"temperature", "top_p", "frequency_penalty", "presence_penalty", "stop_strings"}),
        notes=("deepseek-reasoner accepts but ignores temperature, top_p and the penalties",),
        streaming=True,
    )
    default_api_url = "https://api.deepseek.com/v1"
    api_key_env = "DEEPSEEK_API_KEY"
    requires_api_key = True
    default_num_workers = 20
    provider = "DeepSeek"
