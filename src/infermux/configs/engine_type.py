"""The names of the engines, as the SPEC spells them, and the names plugins add.

Configs check an ``engine:`` name here, without importing the engine registry: the built-in names are
the members of :class:`InferenceEngineType`, a plugin's name is its entry in the ``infermux.engines``
entry-point group (:func:`plugin_targets`, which the registry reads too).
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Iterable
from functools import lru_cache
from importlib.metadata import entry_points

__all__ = [
    "ENTRY_POINT_GROUP",
    "InferenceEngineType",
    "engine_name",
    "engine_value",
    "plugin_targets",
    "unknown_engine",
]

#: The entry-point group through which third-party packages add engines (name -> "module:Class").
ENTRY_POINT_GROUP = "infermux.engines"


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


def engine_name(engine: object) -> str:
    """The name an engine goes by in configs, files and messages: a member's value, a plugin's name as
    given (``str`` of a member is its value, so this is ``str``; one name for the one rule)."""
    return str(engine)


@lru_cache(maxsize=1)
def plugin_targets() -> dict[str, str]:
    """Engines registered by installed plugins: name -> ``"module:Class"`` (built-in names win)."""
    builtin = {member.value for member in InferenceEngineType}
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in builtin}


def engine_value(value: object) -> InferenceEngineType | str | None:
    """An ``engine:`` value as configs hold it: a built-in member, a plugin's name, or None; raises
    ``ValueError`` naming the engines there are."""
    if value is None or isinstance(value, InferenceEngineType):
        return value
    name = str(value).strip().upper()
    if name in InferenceEngineType.__members__:
        return InferenceEngineType(name)
    plugins = plugin_targets()
    if name in plugins:
        return name
    raise ValueError(unknown_engine(value, [*dict.fromkeys(m.value for m in InferenceEngineType), *plugins]))


def unknown_engine(value: object, known: Iterable[str]) -> str:
    """The error for an engine name that is none of ``known``: the closest name, then all of them."""
    known = list(known)
    close = difflib.get_close_matches(str(value).strip().upper().replace("-", "_"), known, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]}?" if close else ""
    return f"unknown engine {value!r}.{hint} Known engines: {', '.join(known)}."
