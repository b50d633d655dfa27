"""The names of the engines, as the SPEC spells them."""

from __future__ import annotations

import enum

__all__ = ["InferenceEngineType"]


class InferenceEngineType(str, enum.Enum):
    """Every engine infermux can run; the value is what a config's ``engine:`` field holds."""

    NATIVE = "NATIVE"
    VLLM = "VLLM"
    LLAMACPP = "LLAMACPP"
    REMOTE_VLLM = "REMOTE_VLLM"
    SGLANG = "SGLANG"
    REMOTE = "REMOTE"
    ANTHROPIC = "ANTHROPIC"
    GOOGLE_VERTEX = "GOOGLE_VERTEX"
    GOOGLE_GEMINI = "GOOGLE_GEMINI"
    DEEPSEEK = "DEEPSEEK"
    PARASAIL = "PARASAIL"
    TOGETHER = "TOGETHER"
    OPENAI = "OPENAI"
    SAMBANOVA = "SAMBANOVA"
    LAMBDA = "LAMBDA"
    BEDROCK = "BEDROCK"

    def __str__(self) -> str:
        return self.value
