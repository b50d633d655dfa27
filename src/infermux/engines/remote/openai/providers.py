"""Hosted OpenAI-compatible providers, one row each: the only place such a provider is described.

Adding a provider is one :class:`Provider` row here plus its member in
:class:`~infermux.configs.engine_type.InferenceEngineType`; the registry, ``infermux.inference``, the
engine docs and ``infermux engines`` all read this table. A row's class (``TogetherInferenceEngine``, ...)
is a :class:`~infermux.engines.remote.openai.engine.RemoteInferenceEngine` subclass built on first use
(so importing the table stays light). A provider with quirks names the module that defines its class
(``quirks``); that class takes the row's attributes with :func:`provider_class` (OpenAI's reasoning
models in :mod:`.openai`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from infermux.configs.engine_type import InferenceEngineType as E
from infermux.engines.capabilities import Capabilities

if TYPE_CHECKING:
    from infermux.engines.remote.openai.engine import RemoteInferenceEngine

__all__ = ["BATCH_CLIENTS", "OPENAI_PARAMS", "PROVIDERS", "SAMPLE_PARAMS", "Provider", "provider_class"]

#: Generation parameters of OpenAI's chat-completions API itself.
OPENAI_PARAMS = frozenset(
    {"temperature", "top_p", "frequency_penalty", "presence_penalty", "stop_strings", "seed", "logit_bias"}
)
#: Several answers per request and token log-probabilities (``n``, ``logprobs``, ``top_logprobs``).
SAMPLE_PARAMS = frozenset({"n", "logprobs", "top_logprobs"})
_JSON = frozenset({"json"})
#: OpenAI's ``service_tier`` values (its chat-completions reference); OpenRouter passes them on.
OPENAI_TIERS = ("auto", "default", "flex", "priority")
#: The batch client class of each batch protocol a provider row can name (``"module:Class"``).
BATCH_CLIENTS = {
    "openai": "infermux.engines.remote.openai.batch_api:OpenAIBatchClient",
    "together": "infermux.engines.remote.openai.together_batch:TogetherBatchClient",
    "fireworks": "infermux.engines.remote.openai.fireworks_batch:FireworksBatchClient",
}


@dataclass(frozen=True)
class Provider:
    """One hosted OpenAI-compatible provider."""

    engine: E
    class_name: str
    label: str  # the provider's name in messages ("Together AI")
    url: str  # default ``remote_params.api_url``
    key_env: str  # environment variable holding the API key
    summary: str  # first line of the class docstring (and of its docs section)
    workers: int = 20  # default ``remote_params.num_workers``
    params: frozenset[str] = OPENAI_PARAMS  # generation parameters the provider documents
    guided: frozenset[str] = _JSON  # guided-decoding kinds (``json`` goes out as ``response_format``)
    images: bool = True
    notes: tuple[str, ...] = ()
    batch_api: bool = True  # the provider offers a batch API to its users
    batch: str = "openai"  # which one: a key of registry.BATCH_OPERATIONS and of BATCH_CLIENTS
    tools: bool = True  # OpenAI's function calling (tools, tool_choice, tool_calls)
    quirks: str | None = None  # module defining the class when the provider needs code of its own
    max_items: Mapping[str, int] = field(default_factory=dict)  # documented limits (see Capabilities)
    value_ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    tiers: tuple[str, ...] = ()  # ``generation.service_tier`` values the API takes

    @property
    def module(self) -> str:
        return self.quirks or __name__

    @property
    def target(self) -> str:
        """``"module:Class"`` for the registry."""
        return f"{self.module}:{self.class_name}"

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(generation_params=self.params, guided_decoding=self.guided, images=self.images,
                            streaming=True, notes=self.notes, batch_api=self.batch_api, tools=self.tools,
                            max_items=self.max_items, value_ranges=self.value_ranges,
                            service_tiers=self.tiers)  # fmt: skip


PROVIDERS: dict[E, Provider] = {
    row.engine: row
    for row in (
        Provider(E.OPENAI, "OpenAIInferenceEngine", "OpenAI", "https://api.openai.com/v1", "OPENAI_API_KEY",
                 "OpenAI (``OPENAI_API_KEY``).", workers=50, quirks="infermux.engines.remote.openai.openai",
                 params=OPENAI_PARAMS | SAMPLE_PARAMS,
                 notes=("reasoning models (o1/o3/o4/gpt-5) ignore temperature, top_p, penalties, logit_bias, stop",
                        "reasoning models refuse logprobs"),
                 max_items={"stop_strings": 4}, tiers=OPENAI_TIERS,
                 value_ranges={"temperature": (0.0, 2.0), "logit_bias": (-100.0, 100.0), "n": (1, 128)}),
        Provider(E.TOGETHER, "TogetherInferenceEngine", "Together AI", "https://api.together.xyz/v1",
                 "TOGETHER_API_KEY", "Together AI (``TOGETHER_API_KEY``); also takes ``min_p`` and JSON-schema output.",
                 params=OPENAI_PARAMS | {"min_p"}, batch="together"),
        Provider(E.LAMBDA, "LambdaInferenceEngine", "Lambda", "https://api.lambda.ai/v1", "LAMBDA_API_KEY",
                 "Lambda's hosted models (``LAMBDA_API_KEY``). Lambda places no rate limit, so 20 workers by default."),
        Provider(E.DEEPSEEK, "DeepSeekInferenceEngine", "DeepSeek", "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY",
                 "DeepSeek (``DEEPSEEK_API_KEY``).", images=False, guided=frozenset(),
                 params=frozenset({"temperature", "top_p", "frequency_penalty", "presence_penalty", "stop_strings"}),
                 notes=("deepseek-reasoner accepts but ignores temperature, top_p and the penalties",)),
        Provider(E.SAMBANOVA, "SambanovaInferenceEngine", "SambaNova", "https://api.sambanova.ai/v1",
                 "SAMBANOVA_API_KEY", "SambaNova Cloud (``SAMBANOVA_API_KEY``). Its API documents temperature, "
                 "top_p and stop only; free-tier rate limits are low, hence 8 workers.", workers=8, guided=frozenset(),
                 params=frozenset({"temperature", "top_p", "stop_strings"})),
        Provider(E.PARASAIL, "ParasailInferenceEngine", "Parasail", "https://api.parasail.io/v1", "PARASAIL_API_KEY",
                 "Parasail.io (``PARASAIL_API_KEY``)."),
        Provider(E.FIREWORKS, "FireworksInferenceEngine", "Fireworks AI", "https://api.fireworks.ai/inference/v1",
                 "FIREWORKS_API_KEY", "Fireworks AI (``FIREWORKS_API_KEY``); model names look like "
                 "``accounts/fireworks/models/NAME``.", params=OPENAI_PARAMS | {"min_p"}, batch="fireworks"),
        Provider(E.OPENROUTER, "OpenRouterInferenceEngine", "OpenRouter", "https://openrouter.ai/api/v1",
                 "OPENROUTER_API_KEY", "OpenRouter (``OPENROUTER_API_KEY``): one API in front of many providers' "
                 "models (``vendor/model`` names).", params=OPENAI_PARAMS | {"min_p"},
                 notes=("OpenRouter drops parameters the routed provider does not support",), batch_api=False,
                 tiers=OPENAI_TIERS),
        Provider(E.CEREBRAS, "CerebrasInferenceEngine", "Cerebras", "https://api.cerebras.ai/v1", "CEREBRAS_API_KEY",
                 "Cerebras Inference (``CEREBRAS_API_KEY``). Free-tier rate limits are low, hence 8 workers.",
                 workers=8, images=False, params=frozenset({"temperature", "top_p", "seed", "stop_strings"}),
                 batch_api=False),
        Provider(E.HUGGING_FACE_ROUTER, "HuggingFaceRouterInferenceEngine", "Hugging Face",
                 "https://router.huggingface.co/v1", "HF_TOKEN", "Hugging Face Inference Providers through its "
                 "router (``HF_TOKEN``); ``MODEL:provider`` picks the provider.",
                 notes=("parameters and JSON output depend on the provider the router picks",), batch_api=False),
    )
}  # fmt: skip


def provider_class(engine: E) -> Any:
    """Class decorator: give a hand-written provider class its row's attributes (the quirks hook)."""
    row = PROVIDERS[engine]

    def apply(cls: type[RemoteInferenceEngine]) -> type[RemoteInferenceEngine]:
        cls.capabilities = row.capabilities
        cls.default_api_url = row.url
        cls.api_key_env = row.key_env
        cls.requires_api_key = True
        cls.default_num_workers = row.workers
        cls.provider = row.label
        cls.batch_protocol = row.batch
        if not cls.__doc__:
            cls.__doc__ = row.summary
        return cls

    return apply


def _build(row: Provider) -> type[RemoteInferenceEngine]:
    from infermux.engines.remote.openai.engine import RemoteInferenceEngine

    namespace = {"__module__": __name__, "__qualname__": row.class_name, "__doc__": row.summary}
    cls: type[RemoteInferenceEngine] = provider_class(row.engine)(
        type(row.class_name, (RemoteInferenceEngine,), namespace)
    )
    return cls


def __getattr__(name: str) -> Any:
    """The class of a row without quirks, built once on first access (``TogetherInferenceEngine``, ...)."""
    for row in PROVIDERS.values():
        if row.class_name == name and row.quirks is None:
            cls = globals()[name] = _build(row)
            return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
