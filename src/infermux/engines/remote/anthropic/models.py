"""Which Claude models refuse sampling parameters (``temperature``, ``top_p``, ``top_k``).

Opus from 4.7 on, Sonnet from 5.0 on, and the reasoning-first families ``claude-fable-*`` and
``claude-mythos-*`` answer a request carrying any of them with a 400. Model names look like
``claude-<family>-<major>[-<minor>][-YYYYMMDD]``, possibly inside a provider's id
(``anthropic.claude-opus-4-7-20260101-v1:0`` on Bedrock, ``claude-opus-4-7@20260101`` on Vertex).
Older names that put the version first (``claude-3-7-sonnet-20250219``) all accept sampling.
"""

from __future__ import annotations

import logging
import re

__all__ = ["SAMPLING_PARAMS", "refuses_sampling", "warn_dropped_sampling"]

logger = logging.getLogger("infermux.remote")

#: GenerationParams fields that such models refuse.
SAMPLING_PARAMS = ("temperature", "top_p", "top_k")

_NAME = re.compile(
    r"(?:^|[./:])claude-(?P<family>[a-z]+)-(?P<major>\d+)(?:-(?P<minor>\d{1,2}))?"
    r"(?:[-@](?P<date>\d{8}))?(?:-v\d+(?::\d+)?|-latest)?$"
)
#: Family → first (major, minor) that refuses sampling; (0, 0) for families that always refuse.
_FIRST_REFUSING = {"opus": (4, 7), "sonnet": (5, 0), "fable": (0, 0), "mythos": (0, 0)}


def refuses_sampling(model_name: str) -> bool:
    """Whether ``model_name`` is a Claude model that rejects temperature, top_p and top_k."""
    match = _NAME.search(model_name.strip().lower())
    if match is None:
        return False
    first = _FIRST_REFUSING.get(match["family"])
    if first is None:
        return False
    version = (int(match["major"]), int(match["minor"] or 0))
    return version >= first


def warn_dropped_sampling(engine: str, model_name: str, explicit: set[str]) -> None:
    """The one warning for sampling parameters the user set but the model refuses."""
    names = ", ".join(sorted(explicit))
    logger.warning(
        "%s: model %s does not accept sampling parameters; %s not sent (remove %s from the config to "
        "silence this warning).",
        engine,
        model_name,
        names,
        "it" if len(explicit) == 1 else "them",
    )
