"""Protocol-faithful fakes of cloud inference APIs, written from the providers' references.

Each fake is an aiohttp server on 127.0.0.1 that records requests, validates them and
answers in the provider's own success and error formats.
"""

from ._server import Exchange, RecordedRequest, tiny_png
from .anthropic import FakeAnthropic
from .anthropic_batches import FakeAnthropicBatches
from .bedrock_batches import FakeBedrockBatches
from .fireworks_batch import FakeFireworksBatch
from .gemini import FakeGemini
from .gemini_batches import FakeGeminiBatches
from .openai_batch import FakeOpenAIBatch
from .openai_chat import QUOTA_BODY, FakeOpenAIChat
from .sglang import FakeSGLang
from .together_batch import FakeTogetherBatch
from .vertex import FakeVertex
from .vertex_batches import FakeVertexBatches

__all__ = [
    "QUOTA_BODY",
    "Exchange",
    "FakeAnthropic",
    "FakeAnthropicBatches",
    "FakeBedrockBatches",
    "FakeFireworksBatch",
    "FakeGemini",
    "FakeGeminiBatches",
    "FakeOpenAIBatch",
    "FakeOpenAIChat",
    "FakeSGLang",
    "FakeTogetherBatch",
    "FakeVertex",
    "FakeVertexBatches",
    "RecordedRequest",
    "tiny_png",
]
