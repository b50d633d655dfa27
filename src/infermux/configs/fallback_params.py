"""An engine that takes over the rows the job's engine cannot answer (``fallbacks:``)."""

from __future__ import annotations

from typing import Any

from pydantic import field_validator

from infermux.configs._base import ConfigModel
from infermux.configs.engine_type import InferenceEngineType, engine_value
from infermux.configs.generation_params import GenerationParams
from infermux.configs.model_params import ModelParams
from infermux.configs.remote_params import RemoteParams

__all__ = ["FallbackConfig"]


class FallbackConfig(ConfigModel):
    """An item of ``fallbacks:``: a whole engine, as the top of a config names one."""

    engine: InferenceEngineType | str
    """The engine (``OPENAI``, ``REMOTE_VLLM``, ``LLAMACPP``, ...)."""
    model: ModelParams
    """Its model (``model_name`` at least)."""
    remote_params: RemoteParams | None = None
    """Its server settings (remote engines)."""
    generation: GenerationParams | None = None
    """Its generation settings; null: the job's ``generation``."""

    @field_validator("engine", mode="before")
    @classmethod
    def _engine_name(cls, value: Any) -> Any:
        return engine_value(value)

    def fingerprint_data(self, generation: GenerationParams | None = None) -> dict[str, Any]:
        """What counts for resume: engine, model, generation (its own, else ``generation``) and server."""
        own = self.generation or generation or GenerationParams()
        return {
            "engine": str(self.engine),
            "model": self.model.fingerprint_data(),
            "generation": own.fingerprint_data(),
            "remote_params": self.remote_params.fingerprint_data() if self.remote_params else None,
        }
