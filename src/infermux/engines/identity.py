"""An engine class's name, read from its identity row (:mod:`infermux.engines.registry`), not written twice.

``InferenceEngine.engine_type`` is a :class:`RegisteredName`: the name of the row whose target is the
class, or its nearest base class that has one (a subclass of ``RemoteInferenceEngine`` is a REMOTE
engine); None for a class no row names. A class may still set ``engine_type`` itself (a plugin written
before this, a test's engine), and an instance may (a fallback chain answers under its primary's name).
The registry itself never writes to a class.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RegisteredName"]

_NAMES: dict[type, Any] = {}


class RegisteredName:
    """A class attribute whose value is the class's registered engine name (looked up once per class)."""

    def __get__(self, instance: object, owner: type) -> Any:
        try:
            return _NAMES[owner]
        except KeyError:
            from infermux.engines.registry import registered_name

            name = _NAMES[owner] = registered_name(owner)
            return name
