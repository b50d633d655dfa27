"""src/infermux has no import cycles among its module-level imports.

An AST walk over every module: imports at module level count (also inside ``try``/``if`` blocks), while
imports inside functions and under ``if TYPE_CHECKING:`` do not (they run later, or never).
"""

from __future__ import annotations

import ast
from pathlib import Path

import infermux

ROOT = Path(infermux.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.append(node)
            elif isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.With):
                visit(node.body)

    visit(tree.body)
    return found


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _top_level_imports(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _resolve(name, path.name == "__init__.py", node)
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for target in targets:
                # the longest prefix that is one of our modules (``from a.b import c`` may name a module c)
                parts = target.split(".")
                while parts and ".".join(parts) not in modules:
                    parts.pop()
                if parts and ".".join(parts) != name:
                    graph[name].add(".".join(parts))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(graph, WHITE)
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        color[node] = GREY
        stack.append(node)
        for nxt in sorted(graph[node]):
            if color[nxt] == GREY:
                return [*stack[stack.index(nxt) :], nxt]
            if color[nxt] == WHITE and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        color[node] = BLACK
        return None

    for node in sorted(graph):
        if color[node] == WHITE and (cycle := dfs(node)):
            return cycle
    return None


def test_walk_sees_the_engine_layer() -> None:
    graph = import_graph()
    assert "infermux.jobs.loop" in graph["infermux.jobs.api"]
    assert "infermux.engines.base" in graph["infermux.engines.llamacpp.engine"]


def test_the_walk_finds_a_planted_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_layers_import_only_downwards() -> None:
    """configs/types/errors/text ← engines ← jobs (and distributed) ← cli (docs/architecture.md), at module level."""
    # The Batch API modules (OpenAI's, Anthropic's Message Batches) are job runners of their own
    # (submit/fetch read input rows and write job files): the engine modules allowed to use the job
    # layer's files and rows.
    allowed = {"infermux.engines.remote.openai.batch_api", "infermux.engines.remote.anthropic_batch"}
    order = {"configs": 0, "types": 0, "errors": 0, "text": 0, "engines": 1, "jobs": 2, "distributed": 2, "cli": 3}
    graph = import_graph()
    wrong = []
    for module, targets in graph.items():
        layer = order.get(module.split(".")[1]) if module.count(".") else None
        for target in targets:
            target_layer = order.get(target.split(".")[1]) if target.count(".") else None
            if module in allowed and target.startswith(
                ("infermux.jobs.files", "infermux.jobs.loop", "infermux.jobs.rows")
            ):
                continue
            if layer is not None and target_layer is not None and target_layer > layer:
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong
