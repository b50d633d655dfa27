"""The whole job: model, generation, engine, remote settings, input and output paths."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from infermux.configs._base import ConfigModel
from infermux.configs.distributed_params import DistributedParams
from infermux.configs.engine_type import InferenceEngineType, engine_value
from infermux.configs.fallback_params import FallbackConfig
from infermux.configs.fingerprint import columns_fingerprint, config_fingerprint, fallbacks_fingerprint
from infermux.configs.generation_params import GenerationParams
from infermux.configs.model_params import ModelParams
from infermux.configs.remote_params import RemoteParams

__all__ = ["InferenceConfig"]

DEFAULT_MODEL = "smollm2-135m-instruct"


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
    """Input Conversation JSONL (batch mode): a local path or a URI pyarrow reads (``s3://``)."""
    output_path: str | None = None
    """Where to write the answered conversations (JSONL): a local path or a URI pyarrow writes (``s3://``)."""
    input_format: str | None = None
    """``jsonl``, ``parquet`` or ``dataset`` (a Hugging Face ``save_to_disk`` folder). Null: from the input's
    extension or folder (docs/batch.md)."""
    output_format: str | None = None
    """``jsonl``, ``parquet`` or ``dataset`` (a ``save_to_disk`` folder). Null: ``parquet`` for an output ending in
    ``.parquet``, ``dataset`` for one ending in ``/`` (or a dataset folder already there), else ``jsonl``."""
    prompt_column: str | None = None
    """Table inputs without a ``messages`` column: the column holding each row's user message."""
    system_prompt: str | None = None
    """Table inputs with ``prompt_column``: a system message for every row."""
    system_column: str | None = None
    """Table inputs with ``prompt_column``: the column holding each row's system message."""
    id_column: str | None = None
    """Table inputs: the column holding each row's id (what resume matches; default ``conversation_id`` if
    present, else an id from the row's position and content)."""
    generation_column: str | None = None
    """Table inputs: the column holding each row's generation settings (an object like the ``generation:``
    section; default ``generation`` if present). JSONL rows carry them as a ``generation`` field."""
    job_dir: str | None = None
    """Local folder for the job's partial and errors files (its resume state). Null: beside the output, or
    for an output URI ``infermux-jobs/<name>-<hash>`` under the current directory (docs/batch.md)."""
    strict: bool = False
    """Fail, instead of warning, when the engine does not support a requested parameter."""
    distributed: DistributedParams | None = None
    """Shard the batch job over a Ray cluster (``--ray``); see docs/distributed.md."""
    max_cost: float | None = Field(default=None, ge=0)
    """Budget in US dollars (``--max-cost``): no new row starts once its estimated cost would pass it; the
    job stops resumable (exit 4). Needs a model with known prices."""
    cache: bool | None = None
    """The per-row answer cache: None (default) uses it for greedy or seeded generation only; ``false``
    (``--no-cache``) never; ``true`` also for sampling without a seed."""
    cache_path: str | None = None
    """The answer cache file (default ``$INFERMUX_CACHE_DIR/answers.sqlite``, else
    ``~/.cache/infermux/answers.sqlite``)."""
    cache_max_mb: int = Field(default=1024, ge=1)
    """Size cap of the answer cache in MiB; the least recently used answers go first."""
    progress_path: str | None = None
    """Also write the job's progress as JSON to this file (replaced atomically) for dashboards."""
    progress_interval_s: float = Field(default=10.0, gt=0)
    """Seconds between progress lines when stderr is not a terminal (and between progress_path writes)."""
    fallbacks: list[FallbackConfig] = Field(default_factory=list)
    """Engines that answer, in order, the rows this one cannot for a reason another engine may not share:
    its server down, its quota or rate-limit budget exhausted (never a bad request). Each item is an
    ``engine``, a ``model`` and optionally its own ``remote_params`` and ``generation`` (docs/remote.md)."""

    @field_validator("engine", mode="before")
    @classmethod
    def _engine_name(cls, value: Any) -> Any:
        return engine_value(value)

    def resolved_engine(self) -> InferenceEngineType | str:
        """The engine to use, choosing one from the model when ``engine`` is not set."""
        if self.engine is not None:
            return self.engine
        name = self.model.model_name
        if name.lower() == DEFAULT_MODEL or name.lower().endswith(".gguf"):
            return InferenceEngineType.LLAMACPP
        return InferenceEngineType.NATIVE

    def fingerprint(self) -> str:
        """A stable hash of everything that changes outputs (see ``ConfigModel.not_fingerprinted``)."""
        fingerprint = config_fingerprint(self.resolved_engine(), self.model, self.generation, self.remote_params)
        if self.fallbacks:
            data = [f.fingerprint_data(self.generation) for f in self.fallbacks]
            fingerprint = fallbacks_fingerprint(fingerprint, data)
        return columns_fingerprint(fingerprint, self.column_mapping())

    def column_mapping(self) -> list[str | None]:
        """A table input's prompt column, system prompt, system column and id column (docs/batch.md)."""
        return [self.prompt_column, self.system_prompt, self.system_column, self.id_column]
