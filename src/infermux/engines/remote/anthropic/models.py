"""What infermux knows of Claude models, as data, shared by ANTHROPIC and BEDROCK.

**Sampling parameters.** Some Claude models answer a request carrying ``temperature``, ``top_p`` or
``top_k`` with a 400. :data:`SAMPLING_REFUSED` lists them by family: Opus from 4.7, Sonnet from 5.0, and
the reasoning-first families ``claude-fable`` and ``claude-mythos`` whatever follows the family name
(``claude-mythos-preview``). Haiku accepts them (the same table as Oumi's). Versioned names look like
``claude-<family>-<major>[-<minor>][-YYYYMMDD]``, possibly inside a provider's id
(``us.anthropic.claude-opus-4-7-20260101-v1:0`` on Bedrock, ``claude-opus-4-7@20260101`` on Vertex);
names that put the version first (``claude-3-7-sonnet-20250219``) all accept sampling.

A model newer than this table is set by the user: ``model.model_kwargs.accepts_sampling: false`` sends no
sampling parameter to it (``true`` sends them to a model the table lists); the key is read here and
never sent to the provider.

**Extended thinking** (``model_kwargs.thinking``, on both engines): :func:`thinking_problems` says before
anything is sent what every request would be refused for (a ``budget_tokens`` under 1024 or not below
``max_tokens``, forced tool use, ``top_p`` under 0.95); no ``temperature`` is sent with thinking.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from infermux.configs.generation_params import GenerationParams

__all__ = [
    "ACCEPTS_SAMPLING_KEY",
    "SAMPLING_PARAMS",
    "SAMPLING_REFUSED",
    "THINKING_MIN_BUDGET",
    "claude_limit_problems",
    "refuses_sampling",
    "sends_sampling",
    "thinking_problems",
    "warn_dropped_sampling",
]

logger = logging.getLogger("infermux.remote")

#: GenerationParams fields that such models refuse.
SAMPLING_PARAMS = ("temperature", "top_p", "top_k")

#: Family → first (major, minor) that refuses sampling; None: every model of the family, whatever
#: follows its name. Oumi's list, kept in step with Anthropic's model pages.
SAMPLING_REFUSED: Mapping[str, tuple[int, int] | None] = {
    "opus": (4, 7),
    "sonnet": (5, 0),
    "fable": None,
    "mythos": None,
}

#: ``model.model_kwargs`` key that overrides the table for one model (true / false).
ACCEPTS_SAMPLING_KEY = "accepts_sampling"

_VERSIONED = re.compile(
    r"(?:^|[./:])claude-(?P<family>[a-z]+)-(?P<major>\d+)(?:-(?P<minor>\d{1,2}))?"
    r"(?:[-@](?P<date>\d{8}))?(?:-v\d+(?::\d+)?|-latest)?$"
)
_FAMILY = re.compile(r"(?:^|[./:])claude-(?P<family>[a-z]+)(?:[-@:]|$)")

#: Extended thinking's smallest ``budget_tokens``, and the ``top_p`` range it allows.
THINKING_MIN_BUDGET = 1024
_THINKING_TOP_P = 0.95


def refuses_sampling(model_name: str) -> bool:
    """Whether ``model_name`` is a Claude model that rejects temperature, top_p and top_k (the table)."""
    name = model_name.strip().lower()
    family = _FAMILY.search(name)
    if family is not None and family["family"] in SAMPLING_REFUSED and SAMPLING_REFUSED[family["family"]] is None:
        return True
    match = _VERSIONED.search(name)
    if match is None:
        return False
    first = SAMPLING_REFUSED.get(match["family"])
    if first is None:
        return False
    return (int(match["major"]), int(match["minor"] or 0)) >= first


def sends_sampling(model_name: str, model_kwargs: Mapping[str, Any]) -> bool:
    """Whether requests for this model carry sampling parameters: the user's
    ``model_kwargs.accepts_sampling`` when set, else the table."""
    override = model_kwargs.get(ACCEPTS_SAMPLING_KEY)
    if isinstance(override, bool):
        return override
    return not refuses_sampling(model_name)


def warn_dropped_sampling(engine: str, model_name: str, explicit: set[str]) -> None:
    """The one warning for sampling parameters the user set but the model refuses."""
    names = ", ".join(sorted(explicit))
    logger.warning(
        "%s: model %s does not accept sampling parameters; %s not sent (remove %s from the config to "
        "silence this warning; model.model_kwargs.%s: true sends them).",
        engine,
        model_name,
        names,
        "it" if len(explicit) == 1 else "them",
        ACCEPTS_SAMPLING_KEY,
    )


def thinking_problems(model_kwargs: Mapping[str, Any], generation: GenerationParams) -> list[str]:
    """What every request would be refused for with ``model_kwargs.thinking`` (Anthropic's extended
    thinking object), one sentence each; empty when thinking is off or consistent."""
    thinking = model_kwargs.get("thinking")
    if thinking is None:
        return []
    where = "model.model_kwargs.thinking"
    if not isinstance(thinking, Mapping):
        return [f'{where} is an object such as {{"type": "enabled", "budget_tokens": 2048}}']
    kind = thinking.get("type")
    if kind == "disabled":
        return []
    problems: list[str] = []
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or isinstance(budget, bool):
            problems.append(f"{where}.budget_tokens must be a whole number of tokens (got {budget!r})")
        elif budget < THINKING_MIN_BUDGET:
            problems.append(f"{where}.budget_tokens={budget}: the smallest thinking budget is {THINKING_MIN_BUDGET}")
        elif budget >= generation.max_new_tokens:
            problems.append(
                f"{where}.budget_tokens={budget} must be below generation.max_new_tokens={generation.max_new_tokens} "
                f"(thinking is part of the answer's tokens): raise max_new_tokens above {budget} or lower the budget"
            )
    if generation.tool_choice == "required" or generation.forced_tool:
        problems.append(
            f"generation.tool_choice={generation.tool_choice!r} forces a tool call, which extended thinking "
            "does not allow (only auto or none)"
        )
    if generation.top_p < _THINKING_TOP_P:
        problems.append(
            f"generation.top_p={generation.top_p:g}: with extended thinking top_p must be between "
            f"{_THINKING_TOP_P:g} and 1"
        )
    return problems


def claude_limit_problems(declared: list[str], model_name: str, model_kwargs: Mapping[str, Any],
                          generation: GenerationParams) -> list[str]:  # fmt: skip
    """What a Claude request would be refused for, ANTHROPIC's and BEDROCK's alike: the engine's
    ``declared`` limits when sampling parameters are sent (a model that takes none is sent no
    temperature, so its range does not matter), and extended thinking's."""
    sampled = sends_sampling(model_name, model_kwargs)
    return [*(declared if sampled else []), *thinking_problems(model_kwargs, generation)]
