"""How to generate: sampling, limits, stops, guided decoding."""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, field_serializer, field_validator, model_validator

from infermux.configs._base import ConfigModel

__all__ = ["SEED_MAX", "SEED_MIN", "GenerationParams", "GuidedDecodingParams", "ToolChoice"]

#: The seeds accepted (a signed 64-bit integer; engines with a narrower seed map onto it: ``engines/seeds.py``).
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1

#: ``auto`` | ``none`` | ``required`` | ``{"type": "function", "function": {"name": ...}}``.
ToolChoice = Literal["auto", "none", "required"] | dict[str, Any]
_TOOL_CHOICES = ("auto", "none", "required")


def _model_schema(value: Any) -> dict[str, Any] | None:
    """The JSON schema of a pydantic model class or of an instance's class; None for anything else."""
    cls = value if isinstance(value, type) else type(value)
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return dict(cls.model_json_schema())
    return None


class GuidedDecodingParams(ConfigModel):
    """Constrain the output: a JSON schema, a regular expression, or a list of choices (one of them)."""

    json_schema_: Any = Field(default=None, alias="json")
    """JSON schema as a dict, a JSON string, a pydantic model class, or an instance of one (its class's schema)."""
    regex: str | None = None
    """Regular expression the whole output must match."""
    choice: list[str] | None = None
    """The output must be exactly one of these strings."""
    strict: bool | None = None
    """Ask the provider to enforce the JSON schema strictly (OpenAI's ``json_schema.strict``); null:
    the provider's default."""

    model_config = {**ConfigModel.model_config, "populate_by_name": True}

    @model_validator(mode="after")
    def _exactly_one(self) -> GuidedDecodingParams:
        given = [k for k in ("json", "regex", "choice") if self._value(k) is not None]
        if len(given) != 1:
            raise ValueError(
                "guided_decoding takes exactly one of json, regex, choice"
                + (f" (got {', '.join(given)})" if given else " (got none)")
            )
        if self.choice is not None and not self.choice:
            raise ValueError("guided_decoding.choice must list at least one string")
        return self

    @field_serializer("json_schema_")
    def _serialize_json(self, value: Any) -> Any:
        # A pydantic model class (or instance) is kept as given but dumped (configs, fingerprints) as its schema.
        schema = _model_schema(value)
        return value if schema is None else schema

    def _value(self, kind: str) -> Any:
        return self.json_schema_ if kind == "json" else getattr(self, kind)

    @property
    def kind(self) -> Literal["json", "regex", "choice"]:
        if self.json_schema_ is not None:
            return "json"
        return "regex" if self.regex is not None else "choice"

    @property
    def json(self) -> Any:  # type: ignore[override]
        """The JSON constraint as given (Oumi's attribute name)."""
        return self.json_schema_

    def schema_dict(self) -> dict[str, Any] | None:
        """The JSON schema as a dict, whatever form it was given in."""
        value = self.json_schema_
        if value is None:
            return None
        if isinstance(value, dict):
            return value
        if isinstance(value, str):
            loaded = json.loads(value)
            if not isinstance(loaded, dict):
                raise ValueError("guided_decoding.json must be a JSON object schema")
            return loaded
        schema = _model_schema(value)
        if schema is not None:
            return schema
        raise ValueError(f"guided_decoding.json has an unsupported type {type(value).__name__}")


class GenerationParams(ConfigModel):
    """Generation settings (the SPEC's ``generation:`` section)."""

    # ``service_tier`` changes the price and the wait, not the answer: a job resumed on another tier goes on.
    not_fingerprinted: ClassVar[frozenset[str]] = frozenset({"batch_size", "use_cache", "service_tier"})
    fingerprinted_when_set: ClassVar[frozenset[str]] = frozenset(
        {"tool_choice", "parallel_tool_calls", "n", "logprobs", "top_logprobs"}
    )

    max_new_tokens: int = Field(default=256, ge=1)
    """Maximum number of tokens to generate."""
    batch_size: int = Field(default=1, ge=1)
    """Sequences generated together by local engines."""
    exclude_prompt_from_response: bool = True
    """Return only the new text, not the prompt."""
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    """Seed for reproducible sampling: any signed 64-bit integer (every one, -1 included, gives repeatable
    answers on every engine)."""
    temperature: float = Field(default=0.0, ge=0.0)
    """Sampling temperature; 0 means greedy."""
    top_p: float = Field(default=1.0, ge=0.0, le=1.0)
    """Nucleus sampling threshold."""
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    """Penalise tokens by how often they already appeared."""
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    """Penalise tokens that already appeared."""
    stop_strings: list[str] | None = None
    """Stop when any of these strings is generated."""
    stop_token_ids: list[int] | None = None
    """Stop when any of these token ids is generated."""
    logit_bias: dict[str, float] = {}
    """Token id (or token) → bias added to its logit."""
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    """Minimum probability, relative to the top token, for a token to be sampled."""
    use_cache: bool = False
    """Oumi's KV-cache switch; infermux engines always use the cache where it is correct to."""
    num_beams: int = Field(default=1, ge=1)
    """Beam search width (1: no beam search)."""
    use_sampling: bool = False
    """Sample even at temperature 0 (temperature > 0 always samples)."""
    guided_decoding: GuidedDecodingParams | None = None
    """Constrain output to a JSON schema, regex or list of choices."""
    skip_special_tokens: bool = True
    """Drop special tokens when decoding."""
    n: int = Field(default=1, ge=1)
    """Answers (samples) per prompt; the first is the assistant message, all are in ``metadata["samples"]``."""
    logprobs: bool = False
    """Keep each answer token's log-probability in ``metadata["samples"]`` (see docs/samples.md)."""
    top_logprobs: int = Field(default=0, ge=0, le=20)
    """Also keep, per token, this many most likely alternatives with their log-probabilities (needs logprobs)."""
    tool_choice: ToolChoice | None = None
    """Whether and which tool the model must call: ``auto``, ``none``, ``required``, or
    ``{"type": "function", "function": {"name": NAME}}``; null: the engine's default (``auto`` when the
    conversation has tools)."""
    parallel_tool_calls: bool = True
    """Let the model make several tool calls in one turn (sent to the provider only when false)."""
    service_tier: str | None = None
    """The provider's processing tier, for engines whose API takes one: OPENAI (and OPENROUTER) ``auto``,
    ``default``, ``flex`` (about half price, slower, may be refused when busy) or ``priority`` (faster,
    dearer); ANTHROPIC ``auto`` or ``standard_only``. Rows are priced at the tier that answered them
    (``metadata["service_tier"]``); null: not sent (the provider's default)."""

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _check_tool_choice(cls, value: Any) -> Any:
        if value is None or value in _TOOL_CHOICES:
            return value
        if isinstance(value, str):
            raise ValueError(
                f"tool_choice {value!r} is not one of auto, none, required, "
                'or {"type": "function", "function": {"name": ...}}'
            )
        if isinstance(value, dict):
            function = value.get("function")
            if value.get("type", "function") == "function" and isinstance(function, dict) and function.get("name"):
                return {"type": "function", "function": {"name": str(function["name"])}}
        raise ValueError(
            'tool_choice as an object looks like {"type": "function", "function": {"name": "get_weather"}}'
        )

    @property
    def forced_tool(self) -> str | None:
        """The function name ``tool_choice`` forces, if it names one."""
        if isinstance(self.tool_choice, dict):
            return str(self.tool_choice["function"]["name"])
        return None

    @field_validator("logit_bias", mode="before")
    @classmethod
    def _keys_as_str(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
        return value

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, value: dict[str, float]) -> dict[str, float]:
        # Oumi's rule, and every provider's that documents one (OpenAI, vLLM, llama.cpp servers).
        bad = [f"{token!r}: {bias:g}" for token, bias in value.items() if not -100 <= bias <= 100]
        if bad:
            raise ValueError(f"logit_bias values must be between -100 and 100 (got {', '.join(bad[:3])})")
        return value

    @field_validator("stop_strings")
    @classmethod
    def _no_empty_stop(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(s == "" for s in value):
            raise ValueError("stop_strings must not contain an empty string")
        return value

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> GenerationParams:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("generation.top_logprobs needs generation.logprobs: true")
        return self

    def fingerprint_data(self) -> dict[str, Any]:
        data = self.model_dump(
            mode="json", exclude={"guided_decoding", *self.not_fingerprinted, *self._at_default_and_new()}
        )
        if self.guided_decoding is not None:
            gd = self.guided_decoding
            data["guided_decoding"] = {"kind": gd.kind, "value": gd.schema_dict() or gd.regex or gd.choice}
            if gd.strict is not None:
                data["guided_decoding"]["strict"] = gd.strict
        return data

    @property
    def sampling(self) -> bool:
        """Whether to sample (temperature > 0 or use_sampling) rather than decode greedily."""
        return self.temperature > 0.0 or self.use_sampling
