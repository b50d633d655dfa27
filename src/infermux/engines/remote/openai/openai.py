"""OPENAI: OpenAI's chat completions, with the reasoning-model quirks handled.

``max_new_tokens`` goes out as ``max_completion_tokens`` (``max_tokens`` is deprecated and rejected
by reasoning models). Reasoning models (o1, o3, o4, gpt-5 families; not ``gpt-5-chat``) reject
``temperature``, ``top_p``, the penalties, ``logit_bias`` and ``stop``: those are left out, with one
warning when the user had set them to something other than the default. Their system messages go out
with the ``developer`` role; o1-mini and o1-preview take neither, so the system text is put in front
of the first user message.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from infermux.configs.engine_type import InferenceEngineType
from infermux.configs.generation_params import GenerationParams
from infermux.configs.model_params import ModelParams
from infermux.engines.capabilities import check_service_tier
from infermux.engines.remote.openai.engine import RemoteInferenceEngine
from infermux.engines.remote.openai.format import encode_messages
from infermux.engines.remote.openai.providers import provider_class
from infermux.types import Conversation, Role

__all__ = ["OpenAIInferenceEngine", "is_reasoning_model"]

logger = logging.getLogger("infermux.remote")

_REASONING = re.compile(r"^(?:openai/)?(?:o\d+(?:$|[-.])|gpt-5(?!-chat)(?:$|[-.]))")
_NO_SYSTEM = re.compile(r"^(?:openai/)?o1-(?:mini|preview)")
# Body field → GenerationParams field, for the ones reasoning models reject.
_REJECTED = {
    "temperature": "temperature",
    "top_p": "top_p",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "logit_bias": "logit_bias",
    "stop": "stop_strings",
}
_DEFAULTS = GenerationParams()
_REASONING_ROOM = 1024


def is_reasoning_model(name: str) -> bool:
    """Whether ``name`` is an OpenAI reasoning model (o1, o3-mini, o4-mini, gpt-5, gpt-5-mini, ...)."""
    return bool(_REASONING.match(name.lower()))


@provider_class(InferenceEngineType.OPENAI)
class OpenAIInferenceEngine(RemoteInferenceEngine):
    """OpenAI (``OPENAI_API_KEY``).

    Its row (URL, key, workers, parameters) is in :mod:`.providers`; the reasoning-model quirks are here.
    """

    max_tokens_field = "max_completion_tokens"

    @property
    def reasoning(self) -> bool:
        return is_reasoning_model(self.served_model_name())

    @classmethod
    def config_limit_problems(cls, model: ModelParams, generation: GenerationParams) -> list[str]:
        # Reasoning models are sent none of the limited parameters (see adjust_body); a service tier they take.
        if is_reasoning_model(model.model_name):
            return check_service_tier("OPENAI", cls.capabilities, generation)
        return super().config_limit_problems(model, generation)

    def adjust_body(self, body: dict[str, Any], generation: GenerationParams) -> dict[str, Any]:
        if not self.reasoning:
            return body
        dropped = []
        for field, param in _REJECTED.items():
            if field in body:
                del body[field]
                if getattr(generation, param) != getattr(_DEFAULTS, param):
                    dropped.append(f"{param}={getattr(generation, param)!r}")
        if dropped:
            logger.warning(
                "%s is a reasoning model and rejects %s; left out of the request.",
                self.served_model_name(),
                ", ".join(dropped),
            )
        if generation.max_new_tokens < _REASONING_ROOM:
            logger.warning(
                "%s counts its hidden reasoning in max_completion_tokens; max_new_tokens=%d may leave no room "
                "for the answer (finish_reason 'length', empty text). Consider %d or more.",
                self.served_model_name(),
                generation.max_new_tokens,
                _REASONING_ROOM,
            )
        return body

    def encode_messages(self, conversation: Conversation) -> list[dict[str, Any]]:
        if not self.reasoning or not any(m.role == Role.SYSTEM for m in conversation.messages):
            return super().encode_messages(conversation)
        if not _NO_SYSTEM.match(self.served_model_name().lower()):
            return encode_messages(conversation.messages, system_role="developer")
        system = "\n\n".join(m.text for m in conversation.messages if m.role == Role.SYSTEM)
        out: list[dict[str, Any]] = []
        turns = [m for m in conversation.messages if m.role != Role.SYSTEM]
        for message, encoded in zip(turns, encode_messages(turns), strict=True):
            if system and message.role == Role.USER:
                content = encoded["content"]
                if isinstance(content, str):
                    encoded["content"] = f"{system}\n\n{content}"
                else:
                    encoded["content"] = [{"type": "text", "text": system}, *content]
                system = ""
            out.append(encoded)
        return out
