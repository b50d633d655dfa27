"""The whole job: model, generation, engine, remote settings, input and output paths."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import Field, field_validator

from infermux.configs._base import ConfigModel
from infermux.configs.engine_type import InferenceEngineType
from infermux.configs.generation_params import GenerationParams
from infermux.configs.model_params import ModelParams
from infermux.configs.remote_params import RemoteParams

__all__ = ["InferenceConfig"]

DEFAULT_MODEL = "smollm2-135m-instruct"

# Fields that never change what a model answers: left out of the fingerprint so that, for example,
# resuming with more workers or a larger batch still counts finished rows as done.
_NOT_FINGERPRINTED = {
    "generation": {"batch_size", "use_cache"},
    "remote_params": {
        "api_key", "api_key_env_varname", "max_retries", "retry_backoff_base", "retry_backoff_max",
        "connection_timeout", "num_workers", "politeness_policy", "use_adaptive_concurrency",
        "batch_completion_window",
    },
}  # fmt: skip


class InferenceConfig(ConfigModel):
    """An inference job, as written in a YAML config (Oumi's ``InferenceConfig``)."""

    model: ModelParams = Field(default_factory=lambda: ModelParams(model_name=DEFAULT_MODEL))
    """Which model to load and how."""
    generation: GenerationParams = Field(default_factory=GenerationParams)
    """How to generate."""
    engine: InferenceEngineType | str | None = None
    """Engine to run on (default: LLAMACPP for .gguf and the default model, else NATIVE); plugin
    engines registered under the ``infermux.engines`` entry-point group are named here too."""
    remote_params: RemoteParams | None = None
    """Remote server settings (remote engines only)."""
    input_path: str | None = None
    """Input Conversation JSONL (batch mode)."""
    output_path: str | None = None
    """Where to write the answered conversations (JSONL)."""
    strict: bool = False
    """Fail, instead of warning, when the engine does not support a requested parameter."""

    @field_validator("engine", mode="before")
    @classmethod
    def _engine_name(cls, value: Any) -> Any:
        if value is None or isinstance(value, InferenceEngineType):
            return value
        name = str(value).strip().upper()
        if name in InferenceEngineType.__members__:
            return InferenceEngineType(name)
        from infermux.engines.registry import engine_specs

        if name in engine_specs():
            return name
        known = ", ".join(engine_specs())
        raise ValueError(f"unknown engine {value!r}; use one of {known}")

    def resolved_engine(self) -> InferenceEngineType | str:
        """The engine to use, choosing one from the model when ``engine`` is not set."""
        if self.engine is not None:
            return self.engine
        name = self.model.model_name
        if name.lower() == DEFAULT_MODEL or name.lower().endswith(".gguf"):
            return InferenceEngineType.LLAMACPP
        return InferenceEngineType.NATIVE

    def fingerprint(self) -> str:
        """A stable hash of everything that changes outputs (secrets and throughput knobs excluded)."""
        data: dict[str, Any] = {
            "engine": str(self.resolved_engine()),
            "model": self.model.model_dump(mode="json"),
            "generation": _dump_generation(self.generation),
        }
        if self.remote_params is not None:
            data["remote_params"] = self.remote_params.model_dump(mode="json")
        for section, fields in _NOT_FINGERPRINTED.items():
            if isinstance(data.get(section), dict):
                for name in fields:
                    data[section].pop(name, None)
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _dump_generation(generation: GenerationParams) -> dict[str, Any]:
    data = generation.model_dump(mode="json", exclude={"guided_decoding"})
    if generation.guided_decoding is not None:
        gd = generation.guided_decoding
        data["guided_decoding"] = {"kind": gd.kind, "value": gd.schema_dict() or gd.regex or gd.choice}
    return data
