"""What an engine supports, declared as data, and the checks that enforce it.

:func:`check_params` warns (or, strict, fails) about parameters an engine ignores; :func:`check_limits`
finds values outside what the provider accepts (``max_items``, ``value_ranges``): those always fail
before anything is sent, since every request would be rejected.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from infermux.configs.generation_params import GenerationParams
from infermux.configs.model_params import ModelParams
from infermux.errors import UnsupportedParamError

__all__ = [
    "ALWAYS_SUPPORTED",
    "TOOL_PARAMS",
    "Capabilities",
    "check_limits",
    "check_params",
    "check_service_tier",
    "refuse_unsupported",
    "unsupported_settings",
]

logger = logging.getLogger("infermux.engines")

# Generation fields every engine honours or that do not concern the engine.
ALWAYS_SUPPORTED = frozenset({"max_new_tokens", "batch_size", "exclude_prompt_from_response", "use_cache"})

#: Generation fields that only an engine with the ``tools`` capability honours.
TOOL_PARAMS = frozenset({"tool_choice", "parallel_tool_calls"})

_DEFAULTS = GenerationParams()


@dataclass(frozen=True)
class Capabilities:
    """An engine's declared support.

    ``generation_params`` names the GenerationParams fields the engine maps (beyond
    ``ALWAYS_SUPPORTED``); ``guided_decoding`` the constraint kinds it can enforce. ``max_items``
    caps list parameters (``{"stop_strings": 4}``); ``value_ranges`` bounds numbers, or each value
    of a mapping parameter (``{"logit_bias": (-100, 100)}``), as the provider documents them.
    ``tools``: whether it can offer the conversation's ``tools`` to the model and return its tool
    calls (which brings ``tool_choice`` and ``parallel_tool_calls`` with it).
    """

    generation_params: frozenset[str] = frozenset()
    guided_decoding: frozenset[str] = frozenset()
    images: bool = False
    streaming: bool = False
    lora: bool = False
    batch_api: bool = False
    """Offers the provider's asynchronous Batch API (``infermux batch submit|status|fetch``)."""
    tools: bool = False
    """Offers the conversation's ``tools`` to the model and returns its tool calls."""
    notes: tuple[str, ...] = field(default=())
    max_items: Mapping[str, int] = field(default_factory=dict)
    value_ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    service_tiers: tuple[str, ...] = ()
    """The ``generation.service_tier`` values the provider's API takes (empty: it takes none; setting
    one is then a config error, not a warning: it would change what the job costs)."""

    def supported_params(self) -> set[str]:
        params = set(ALWAYS_SUPPORTED | self.generation_params)
        if self.service_tiers:
            params.add("service_tier")
        if self.guided_decoding:
            params.add("guided_decoding")
        if self.tools:
            params |= TOOL_PARAMS
        return params


def unsupported_settings(
    caps: Capabilities,
    generation: GenerationParams,
    model: ModelParams | None = None,
    *,
    tools: bool = False,
    baseline: GenerationParams = _DEFAULTS,
) -> dict[str, str]:
    """What of ``generation`` (and of an input that offers ``tools``) the engine cannot honour: the field's
    name (``"tools"`` for the input's tools) -> the problem, in words. Settings equal to ``baseline``'s are
    not looked at (a server's requests are held to what they change of the server's own settings)."""
    problems: dict[str, str] = {}
    if tools and not caps.tools:
        problems["tools"] = "tools in the input (tool calling)"
    supported = caps.supported_params()
    for name in GenerationParams.model_fields:
        value: Any = getattr(generation, name)
        if name == "service_tier" or value == getattr(baseline, name):
            continue  # service_tier: an error of check_limits (check_service_tier), not a warning
        if name == "guided_decoding":
            if value is not None and value.kind not in caps.guided_decoding:
                kinds = ", ".join(sorted(caps.guided_decoding)) or "none"
                problems[name] = f"generation.guided_decoding.{value.kind} (supported kinds: {kinds})"
        elif name not in supported:
            problems[name] = f"generation.{name}={value!r}"
    if model is not None and model.adapter_model and not caps.lora:
        problems["adapter_model"] = f"model.adapter_model={model.adapter_model!r} (LoRA adapters)"
    return problems


def refuse_unsupported(
    engine_name: str,
    caps: Capabilities,
    generation: GenerationParams,
    baseline: GenerationParams,
    *,
    tools: bool = False,
) -> None:
    """Raise :class:`~infermux.errors.UnsupportedParamError` (its ``params`` name the fields) if ``generation``
    changes from ``baseline`` anything the engine cannot honour, or offers ``tools`` to an engine without them:
    what ``engine.check(..., baseline=...)`` does for one request (``serve``)."""
    problems = unsupported_settings(caps, generation, tools=tools, baseline=baseline)
    if problems:
        raise UnsupportedParamError(
            f"{engine_name} does not support: {'; '.join(problems.values())}.", params=tuple(problems)
        )


def check_service_tier(engine_name: str, caps: Capabilities, generation: GenerationParams) -> list[str]:
    """A ``generation.service_tier`` the engine cannot send, as one sentence (empty: none)."""
    tier = generation.service_tier
    if tier is None or tier in caps.service_tiers:
        return []
    if not caps.service_tiers:
        return [
            f"generation.service_tier={tier!r}: {engine_name} takes no service tier (OPENAI, OPENROUTER and "
            "ANTHROPIC do); remove it"
        ]
    return [f"generation.service_tier={tier!r}: {engine_name} takes one of {', '.join(caps.service_tiers)}"]


def check_limits(engine_name: str, caps: Capabilities, generation: GenerationParams) -> list[str]:
    """Values of ``generation`` the provider rejects, one readable sentence each (empty: none)."""
    problems: list[str] = check_service_tier(engine_name, caps, generation)
    for name, most in caps.max_items.items():
        value = getattr(generation, name, None)
        if value is not None and len(value) > most:
            problems.append(f"generation.{name} has {len(value)} entries; {engine_name} accepts at most {most}")
    for name, (lo, hi) in caps.value_ranges.items():
        value = getattr(generation, name, None)
        if value is None:
            continue
        values = value.items() if isinstance(value, Mapping) else [(None, value)]
        bad = [(key, v) for key, v in values if not lo <= v <= hi]
        for key, v in bad[:3]:
            where = f"generation.{name}" + (f"[{key!r}]" if key is not None else "")
            problems.append(f"{where}={v!r}: {engine_name} accepts values between {lo:g} and {hi:g}")
    return problems


def check_params(
    engine_name: str,
    caps: Capabilities,
    generation: GenerationParams,
    model: ModelParams | None = None,
    *,
    strict: bool = False,
    tools: bool = False,
    warned: set[str] | None = None,
) -> list[str]:
    """Warn (or, in strict mode, raise) about requested parameters the engine cannot honour.

    ``tools``: the input offers tools to the model (some conversation has ``tools``). Problems already
    in ``warned`` are not warned about again (and the new ones are added to it).
    """
    unsupported = unsupported_settings(caps, generation, model, tools=tools)
    problems = list(unsupported.values())
    if "n" in caps.supported_params():
        from infermux.samples import warn_identical_samples

        warn_identical_samples(generation, engine_name)
    if problems and strict:
        raise UnsupportedParamError(
            f"{engine_name} does not support: {'; '.join(problems)}. "
            "Remove these settings or choose an engine that supports them (see `infermux engines`).",
            params=tuple(unsupported),
        )
    for problem in problems:
        if warned is not None:
            if problem in warned:
                continue
            warned.add(problem)
        logger.warning(
            "%s does not support %s; it is ignored. Set strict: true (or --strict) to make this an error.",
            engine_name,
            problem,
        )
    return problems
