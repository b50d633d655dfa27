"""The engine contract (issue 22, W1): runners reach an engine only through its public entry points.

``answer``, ``stream``, ``session`` and ``check`` (engines/base.py) are what the batch loop, ``serve``,
chat and the Ray replica call; the protected hooks behind them (``_infer_chunk``, ``_stream``, ``_open``,
``_close``, ``_check``, ...) are the engine's own. This test reads the source: a call ``x._hook(...)``
outside ``engines/``, where ``_hook`` is a method an engine class defines, fails it. Calls on ``self``,
``cls`` and ``super()`` are a class's own business and are not counted.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import infermux

ROOT = Path(infermux.__file__).parent
_OWN = {"self", "cls"}


def _engine_classes(trees: dict[Path, ast.Module]) -> list[ast.ClassDef]:
    """The classes under engines/ that derive (by name, through any chain) from InferenceEngine."""
    classes = [node for tree in trees.values() for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    bases = {c.name: {ast.unparse(b).split(".")[-1] for b in c.bases} for c in classes}
    engines = {"InferenceEngine"}
    grew = True
    while grew:
        grew = False
        for name, parents in bases.items():
            if name not in engines and parents & engines:
                engines.add(name)
                grew = True
    return [c for c in classes if c.name in engines]


def private_engine_methods(root: Path = ROOT) -> set[str]:
    """Names of the protected methods (``_x``, not dunders) that engine classes define."""
    trees = {p: ast.parse(p.read_text(encoding="utf-8")) for p in (root / "engines").rglob("*.py")}
    return {
        item.name
        for cls in _engine_classes(trees)
        for item in cls.body
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
        and item.name.startswith("_")
        and not item.name.startswith("__")
    }


def _is_own(value: ast.expr) -> bool:
    if isinstance(value, ast.Name):
        return value.id in _OWN
    return isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "super"


def _nodes_outside_engines(root: Path) -> Iterator[tuple[Path, ast.AST]]:
    """Every syntax node of the modules outside engines/, with the module's path."""
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] != "engines":
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                yield rel, node


def private_calls_outside_engines(root: Path = ROOT) -> list[str]:
    """``path:line name`` of every call of an engine's protected method from outside engines/."""
    hooks = private_engine_methods(root)
    found = []
    for rel, node in _nodes_outside_engines(root):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in hooks
            and not _is_own(node.func.value)
        ):
            found.append(f"{rel}:{node.lineno} {ast.unparse(node.func)}")
    return found


def test_the_hooks_are_known() -> None:
    """The scan sees the seam (else it would pass by finding nothing)."""
    assert {"_infer_chunk", "_stream", "_open", "_close", "_check"} <= private_engine_methods()


def test_nothing_outside_engines_calls_an_engine_hook() -> None:
    found = private_calls_outside_engines()
    assert not found, "call the public entry points (answer, stream, session, check) instead:\n" + "\n".join(found)


def test_the_entry_points_are_not_overridden() -> None:
    """Engines implement hooks; the entry points stay the base class's, so every runner gets the same checks."""
    trees = {p: ast.parse(p.read_text(encoding="utf-8")) for p in (ROOT / "engines").rglob("*.py")}
    entry = {"answer", "stream", "astream", "session", "check"}
    overridden = [
        f"{cls.name}.{item.name}"
        for cls in _engine_classes(trees)
        if cls.name != "InferenceEngine"
        for item in cls.body
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name in entry
    ]
    assert not overridden


def private_engine_attributes(root: Path = ROOT) -> set[str]:
    """Names of the protected attributes (``self._x = ...``) that engine classes set."""
    trees = {p: ast.parse(p.read_text(encoding="utf-8")) for p in (root / "engines").rglob("*.py")}
    names = set()
    for cls in _engine_classes(trees):
        for node in ast.walk(cls):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign)
                else []
            )
            for target in targets:
                if isinstance(target, ast.Attribute) and _is_own(target.value) and target.attr.startswith("_"):
                    names.add(target.attr)
    return names - {name for name in names if name.startswith("__")}


def private_reads_outside_engines(root: Path = ROOT) -> list[str]:
    """``path:line`` of every ``getattr(x, "_attr")`` outside engines/ of an attribute engines keep private."""
    private = private_engine_attributes(root)
    found = []
    for rel, node in _nodes_outside_engines(root):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in {"getattr", "hasattr", "setattr"}
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in private
        ):
            found.append(f"{rel}:{node.lineno} {ast.unparse(node)}")
    return found


def test_nothing_outside_engines_reads_an_engines_private_state_by_name() -> None:
    assert {"_secrets", "_checked"} <= private_engine_attributes()  # the scan sees them
    found = private_reads_outside_engines()
    assert not found, "give the engine a public name for it instead:\n" + "\n".join(found)
