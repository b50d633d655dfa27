"""The layer contract of src/infermux (docs/architecture.md): a module imports only its own layer or lower.

Every import counts, wherever it is written: at module level, inside a function (a lazy import runs
later, but it is still a dependency), and under ``if TYPE_CHECKING:`` (a type is a dependency too).
So do the two ways a module is named by a string and imported by code:

- the literal first argument of ``importlib.import_module("infermux....")``;
- a ``"infermux.module:Class"`` target, the form the engine registry and entry points resolve with
  ``import_module``. A registry row counts as an import by the module that holds the string; the rows
  built at run time (``_R + "..."``, a provider's ``target``) are checked by resolving ``ENGINES``.

The root package ``infermux`` is the public surface, not a layer: importing it loads nothing (its names
are looked up on first access), so any module may use ``infermux.__version__``/``__file__``.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import infermux

ROOT = Path(infermux.__file__).parent

#: Lowest first. A top-level module or package missing here fails the test: place it when you add it.
LAYERS: dict[str, int] = {
    # the vocabulary: types, errors, configs, and the helpers engines and configs share
    **dict.fromkeys(("types", "tool_types", "tool_schema", "errors", "text", "configs", "templates", "models"), 0),
    "tracing": 0,  # OpenTelemetry set-up, read by the transport, the job loop and serve
    # engines; samples.py is how engines write several answers; inference.py re-exports engine classes
    **dict.fromkeys(("engines", "samples", "inference"), 1),
    "jobs": 2,
    # runners beside each other, each over jobs and engines
    **dict.fromkeys(("distributed", "serve"), 3),
    **dict.fromkeys(("cli", "__main__"), 4),
}

#: Importer -> (the upper modules it may import, why). Issue 22 removes all but the engine conveniences.
_JOBS = "infermux.jobs."
ALLOWED: dict[str, tuple[set[str], str]] = {
    # Oumi's engine.infer/ainfer/run_file (and _fingerprint) delegate to the job layer when called;
    # run_file's signature and last_report name the job's BatchReport and InputRow (type-only). So do
    # engine.submit_batch/batch_status/fetch_batch/cancel_batch/list_batches (docs/batch-api.md), to the
    # provider batch runner; their signatures name its BatchJobState and BatchFetchReport (type-only).
    "infermux.engines.base": (
        {_JOBS + m for m in ("api", "sync", "loop", "rows", "provider_batch", "batch_state")},
        "engine conveniences",
    ),
}

_TARGET = re.compile(r"infermux(\.\w+)+:\w+")


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    how: str  # "module", "lazy", "type" (under TYPE_CHECKING) or "string"

    def __str__(self) -> str:
        return f"{self.source}:{self.line} -> {self.target} ({self.how})"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Walk(ast.NodeVisitor):
    def __init__(self, name: str, is_package: bool) -> None:
        self.name, self.is_package = name, is_package
        self.how = "module"
        self.found: list[tuple[str, int, str]] = []  # (dotted name, line, how)

    def _inside(self, how: str, nodes: list[ast.stmt] | list[ast.AST]) -> None:
        outer, self.how = self.how, (self.how if self.how == "type" else how)
        for node in nodes:
            self.visit(node)
        self.how = outer

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self._inside("lazy", [*ast.iter_child_nodes(node)])

    visit_AsyncFunctionDef = visit_Lambda = visit_FunctionDef  # type: ignore[assignment]

    def visit_If(self, node: ast.If) -> None:
        if is_type_checking(node.test):
            self._inside("type", node.body)
            self._inside(self.how, node.orelse)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [(alias.name, node.lineno, self.how) for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = resolve(self.name, self.is_package, node)
        self.found += [(f"{base}.{alias.name}", node.lineno, self.how) for alias in node.names]

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        first = node.args[0] if node.args else None
        if called == "import_module" and isinstance(first, ast.Constant) and isinstance(first.value, str):
            self.found.append((first.value, node.lineno, "string"))
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and _TARGET.fullmatch(node.value):
            self.found.append((node.value.split(":")[0], node.lineno, "string"))


def all_imports() -> list[Edge]:
    """Every edge from one of our modules to another of our modules."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    edges: set[Edge] = set()
    for name, path in modules.items():
        walk = _Walk(name, path.name == "__init__.py")
        walk.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        for dotted, line, how in walk.found:
            # the longest prefix that is one of our modules (``from a.b import c`` may name a module c)
            parts = dotted.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if parts and ".".join(parts) != name:
                edges.add(Edge(name, ".".join(parts), line, how))
    return sorted(edges, key=lambda e: (e.source, e.line, e.target))


def layer(module: str) -> int | None:
    """The module's layer; None for the root package (the public surface)."""
    if module == "infermux":
        return None
    return LAYERS[module.split(".")[1]]


def upward(edges: list[Edge]) -> list[Edge]:
    found = []
    for edge in edges:
        source, target = layer(edge.source), layer(edge.target)
        if source is not None and target is not None and target > source:
            found.append(edge)
    return found


def test_every_module_has_a_layer() -> None:
    tops = {module_name(p).split(".")[1] for p in ROOT.rglob("*.py") if p.parent != ROOT or p.stem != "__init__"}
    assert sorted(tops - set(LAYERS)) == []


def test_the_walk_sees_lazy_type_only_and_string_imports() -> None:
    edges = {(e.source, e.target, e.how) for e in all_imports()}
    assert ("infermux.jobs.api", "infermux.jobs.loop", "module") in edges
    assert ("infermux.engines.base", "infermux.jobs.api", "lazy") in edges
    assert ("infermux.jobs.loop", "infermux.engines.base", "type") in edges
    assert ("infermux.engines.registry", "infermux.engines.vllm.engine", "string") in edges


def test_registry_rows_name_engine_modules() -> None:
    from infermux.engines.registry import ENGINES

    outside = [spec.target for spec in ENGINES.values() if layer(spec.target.split(":")[0]) != LAYERS["engines"]]
    assert outside == []


def test_layers_import_only_downwards() -> None:
    edges = upward(all_imports())
    wrong = [str(e) for e in edges if e.target not in ALLOWED.get(e.source, (set(), ""))[0]]
    assert wrong == [], "upward imports (docs/architecture.md):\n" + "\n".join(wrong)
    used = {(e.source, e.target) for e in edges}
    stale = sorted((source, t) for source, (targets, _) in ALLOWED.items() for t in targets if (source, t) not in used)
    assert stale == [], f"allow-list entries no longer needed: {stale}"
