"""NATIVE's batch and stream paths share :class:`LoadedModel`; neither module reaches into the other."""

from __future__ import annotations

import ast
from pathlib import Path

NATIVE = Path(__file__).resolve().parents[3] / "src" / "infermux" / "engines" / "native"


def _imports(module: str) -> set[str]:
    tree = ast.parse((NATIVE / f"{module}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _private_engine_uses(module: str) -> list[str]:
    tree = ast.parse((NATIVE / f"{module}.py").read_text(encoding="utf-8"))
    return [
        node.attr for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "engine"
        and node.attr.startswith("_")
    ]  # fmt: skip


def test_stream_and_model_do_not_import_the_engine() -> None:
    for module in ("stream", "model", "scheduler"):
        assert "infermux.engines.native.engine" not in _imports(module), module
    assert not _private_engine_uses("stream")


def test_the_engine_and_stream_share_the_loaded_model_interface() -> None:
    assert "infermux.engines.native.model" in _imports("engine")
    assert "infermux.engines.native.model" in _imports("stream")
