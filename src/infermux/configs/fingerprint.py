"""The job fingerprint: a hash of every config field that changes outputs.

Each config section declares the fields that do not (``ConfigModel.not_fingerprinted``: secrets,
throughput and retry knobs) and dumps the rest with ``fingerprint_data()``. Every finished row in a
job's partial file carries the fingerprint it was answered under; a rerun under another fingerprint
(another model, temperature, server, ...) does not count those rows as done.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from infermux.configs.engine_type import InferenceEngineType
    from infermux.configs.generation_params import GenerationParams
    from infermux.configs.model_params import ModelParams
    from infermux.configs.remote_params import RemoteParams

__all__ = ["columns_fingerprint", "config_fingerprint", "fallbacks_fingerprint"]


def config_fingerprint(
    engine: InferenceEngineType | str | None,
    model: ModelParams,
    generation: GenerationParams,
    remote_params: RemoteParams | None = None,
) -> str:
    """16 hex digits, stable across runs and versions for the same output-changing settings."""
    data: dict[str, Any] = {
        "engine": str(engine),
        "model": model.fingerprint_data(),
        "generation": generation.fingerprint_data(),
    }
    if remote_params is not None:
        data["remote_params"] = remote_params.fingerprint_data()
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def columns_fingerprint(fingerprint: str, mapping: list[str | None]) -> str:
    """``fingerprint`` combined with a table's column mapping (prompt, system prompt, system and id columns:
    they change prompts or row ids, so they count for resume); unchanged when nothing is mapped."""
    if not any(mapping):
        return fingerprint
    blob = json.dumps(mapping)
    return hashlib.sha256(f"{fingerprint}|columns|{blob}".encode()).hexdigest()[:16]


def fallbacks_fingerprint(fingerprint: str, fallbacks: list[dict[str, Any]]) -> str:
    """``fingerprint`` combined with the job's fallback engines (each one's engine, model, generation and
    remote settings that count): a row another engine may answer is not the same job's row without them."""
    blob = json.dumps(fallbacks, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{fingerprint}|fallbacks|{blob}".encode()).hexdigest()[:16]
