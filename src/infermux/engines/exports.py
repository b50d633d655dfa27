"""The engine class of an engine package, importable from the package itself without importing it early.

``infermux.engines.vllm.VLLMInferenceEngine`` (the registry target before the engines became packages)
keeps working, while ``import infermux.engines.vllm.feed`` still loads only what it needs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["engine_class_of"]


def engine_class_of(package: str, class_name: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``class_name`` comes from ``package.engine`` on first use."""

    def __getattr__(name: str) -> Any:
        if name == class_name:
            return getattr(importlib.import_module(f"{package}.engine"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
