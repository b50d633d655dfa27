"""Shared base for config models: unknown keys rejected, Oumi-only keys accepted and reported."""

from __future__ import annotations

import difflib
import logging
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator

logger = logging.getLogger("infermux.configs")


class ConfigModel(BaseModel):
    """A pydantic model that forbids unknown fields.

    ``oumi_ignored`` lists fields that Oumi configs may carry but that infermux does not act on: they
    are accepted (so an Oumi YAML loads unmodified) and reported once as ignored.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True, frozen=False)

    oumi_ignored: ClassVar[frozenset[str]] = frozenset()
    #: Fields that never change what a model answers (secrets, throughput and retry knobs): left out of
    #: the job fingerprint, so resuming with, say, more workers still counts finished rows as done. Each
    #: section declares its own; every other field counts.
    not_fingerprinted: ClassVar[frozenset[str]] = frozenset()
    #: Fields added after jobs were first fingerprinted: they count only when set away from their
    #: default, so a job written before they existed still resumes under the same fingerprint.
    fingerprinted_when_set: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _drop_oumi_only_fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and cls.oumi_ignored:
            dropped = [k for k in data if k in cls.oumi_ignored]
            if dropped:
                for key in dropped:
                    logger.warning(
                        "%s.%s is an Oumi setting that infermux does not use; ignored.",
                        cls.__name__,
                        key,
                    )
                data = {k: v for k, v in data.items() if k not in cls.oumi_ignored}
        return data

    def fingerprint_data(self) -> dict[str, Any]:
        """This section's fields that change outputs, as JSON data (what the job fingerprint hashes)."""
        return self.model_dump(mode="json", exclude=set(self.not_fingerprinted) | self._at_default_and_new())

    def _at_default_and_new(self) -> set[str]:
        fields = type(self).model_fields
        return {
            n
            for n in self.fingerprinted_when_set
            if getattr(self, n) == fields[n].get_default(call_default_factory=True)
        }

    @classmethod
    def known_keys(cls) -> set[str]:
        return set(cls.model_fields) | set(cls.oumi_ignored)

    @classmethod
    def suggest(cls, key: str) -> str | None:
        """The closest valid key to ``key``, for "did you mean" messages."""
        matches = difflib.get_close_matches(key, sorted(cls.model_fields), n=1, cutoff=0.6)
        return matches[0] if matches else None
