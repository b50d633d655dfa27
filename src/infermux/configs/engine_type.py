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
    FIREWORKS = "FIREWORKS"
    OPENROUTER = "OPENROUTER"
    CEREBRAS = "CEREBRAS"
    HUGGING_FACE_ROUTER = "HUGGING_FACE_ROUTER"
    #: Oumi's spelling of GOOGLE_GEMINI: an alias, the same member (``engine: GEMINI`` is accepted).
    GEMINI = "GOOGLE_GEMINI"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def _missing_(cls, value: object) -> InferenceEngineType | None:
        # By name as well as by value, case-insensitive: "gemini" and "GEMINI" are GOOGLE_GEMINI.
        return cls.__members__.get(str(value).strip().upper())
