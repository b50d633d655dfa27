"""Per-row generation settings: a row's ``generation`` object overrides the job's settings for that row.

A JSONL row carries them as ``"generation": {"temperature": 0.7, "max_new_tokens": 64}``; a table as a
``generation`` column (a struct, or the same as JSON text) or the column ``--generation_column`` names.
Each override is checked when the input is read, against the same model as the config's ``generation:``
section (:class:`~infermux.configs.generation_params.GenerationParams`), so a bad one fails that row's
input check with its file, line and field. The override stays on the row (the conversation's
``generation`` key), so it is part of the row's resume digest, of its answer-cache key
(:func:`infermux.jobs.options.request_of`) and of the output.

The batch loop applies them in one place (:func:`infermux.jobs.loop.run_chunks`): rows with equal settings
go to the engine together, each group with its own :class:`GenerationParams`, so every engine (remote
request bodies, local samplers) honours them without knowing about rows. Provider batch files encode each
request line with its row's settings the same way.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from infermux.configs.generation_params import GenerationParams
from infermux.errors import InfermuxError, InputError, RowError

if TYPE_CHECKING:
    from infermux.engines.base import InferenceEngine
    from infermux.types import Conversation

__all__ = [
    "ROW_KEY",
    "RowSettings",
    "check_override",
    "max_new_tokens_of",
    "override_of",
    "samples_unseeded",
    "settings_key",
]

logger = logging.getLogger("infermux.jobs")

#: The key of a row's overrides (a JSONL row's field; the default column of a table).
ROW_KEY = "generation"
#: Settings of the job as a whole, which one row cannot change.
JOB_ONLY = {
    "batch_size": "it sets how many rows a local engine decodes together",
    "use_cache": "Oumi's switch, which infermux does not use",
}


def check_override(value: Any, *, path: str, line: int | None = None, what: str = ROW_KEY) -> dict[str, Any]:
    """``value`` as a row's overrides (a dict of generation settings), or :class:`InputError` naming
    ``path``, ``line`` and the field (``what``: how the row names them, ``generation`` or a column)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise InputError(f"{what} is not valid JSON ({exc}); give an object of generation settings.",
                             path=path, line=line) from None  # fmt: skip
    if not isinstance(value, dict):
        raise InputError(
            f'{what} must be an object of generation settings, like {{"temperature": 0.7}} '
            f"(got {type(value).__name__}).",
            path=path,
            line=line,
        )
    value = {k: v for k, v in value.items() if v is not None}  # a struct column gives absent fields as null
    problems = [f"{what}.{k}: set for the whole job only ({why})." for k, why in JOB_ONLY.items() if k in value]
    try:
        GenerationParams.model_validate(value)
    except ValidationError as exc:
        problems += _explain(exc, what)
    if problems:
        raise InputError(" ".join(problems[:3]), path=path, line=line)
    return value


def _explain(exc: ValidationError, what: str) -> list[str]:
    """One line per invalid setting, worded as the config loader words the same mistake."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not str(p).startswith("function-")]
        field = ".".join([what, *loc])
        if err["type"] == "extra_forbidden":
            hint = GenerationParams.suggest(loc[-1]) if len(loc) == 1 else None
            lines.append(f"unknown key '{field}'." + (f" Did you mean '{hint}'?" if hint else ""))
            continue
        msg = err["msg"].removeprefix("Value error, ")
        given = err.get("input")
        got = f" (got {given!r})" if given is not None and not isinstance(given, dict) and len(repr(given)) < 80 else ""
        lines.append(f"{field}: {msg}{got}.")
    return lines


def override_of(conversation: Conversation) -> dict[str, Any] | None:
    """The row's overrides (checked when the input was read), or None."""
    extra = conversation.__pydantic_extra__
    value = extra.get(ROW_KEY) if extra else None
    return value if isinstance(value, dict) and value else None


def samples_unseeded(conversation: Conversation, base: GenerationParams) -> bool:
    """Whether the row's own settings make it sample without a seed (its answer is not one to cache)."""
    value = override_of(conversation)
    if value is None:
        return False
    temperature, sampling = value.get("temperature", base.temperature), value.get("use_sampling", base.use_sampling)
    return bool(temperature or sampling) and value.get("seed", base.seed) is None


def max_new_tokens_of(conversation: Conversation, base: GenerationParams) -> int:
    """The row's token limit: its own ``max_new_tokens``, else the job's (for estimates before it runs)."""
    value = override_of(conversation)
    limit = value.get("max_new_tokens") if value is not None else None
    return limit if isinstance(limit, int) else base.max_new_tokens


def settings_key(conversation: Conversation) -> str:
    """A key equal for rows with equal overrides ("" for a row without)."""
    value = override_of(conversation)
    return "" if value is None else json.dumps(value, sort_keys=True, default=str)


class RowSettings:
    """The settings of each row of a job whose settings are ``base``: ``base`` with the row's overrides.

    Each distinct override is built and checked by ``engine`` once (a warning for what the engine cannot
    honour, or in strict mode the group's rows fail with the reason)."""

    def __init__(self, base: GenerationParams, engine: InferenceEngine | None = None) -> None:
        self.base = base
        self.engine = engine
        self._built: dict[str, GenerationParams | RowError] = {}

    def of(self, conversation: Conversation) -> GenerationParams | RowError:
        key = settings_key(conversation)
        if not key:
            return self.base
        found = self._built.get(key)
        if found is None:
            found = self._build(override_of(conversation) or {})
            if len(self._built) >= 4096:  # a job where every row has its own settings: keep memory bounded
                self._built.clear()
            self._built[key] = found
        return found

    def _build(self, override: dict[str, Any]) -> GenerationParams | RowError:
        try:
            given = GenerationParams.model_validate(override)
            settings = self.base.model_copy(update={name: getattr(given, name) for name in given.model_fields_set})
            GenerationParams.model_validate(settings.model_dump(round_trip=True))  # rules across fields
            if self.engine is not None:
                self.engine.check(settings)
        except (ValidationError, InfermuxError, ValueError) as exc:
            text = str(exc).splitlines()[0] if isinstance(exc, ValidationError) else str(exc)
            return RowError(kind="invalid_input", message=f"the row's generation settings: {text}"[:1000])
        return settings
