"""``infermux engines``: what each engine needs and supports; ``--verbose`` adds what this machine is."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from infermux.errors import install_hint

if TYPE_CHECKING:
    from infermux.engines.machine import Section


def run_engines(*, verbose: bool = False) -> None:
    from infermux.engines.registry import engine_class, engine_specs, is_available

    table = Table(title="infermux engines", show_lines=False)
    table.add_column("engine", no_wrap=True)
    table.add_column("class", no_wrap=True)
    table.add_column("kind", no_wrap=True)  # from the engine's identity row (a plugin's says no more)
    table.add_column("batch API", no_wrap=True)
    for col in ("installed", "images", "stream", "guided", "lora", "tools", "generation params"):
        table.add_column(col, overflow="fold")
    for name, spec in engine_specs().items():
        installed = is_available(name)
        identity = ["plugin" if spec.plugin else spec.kind, spec.batch or "-"]
        row = [name, spec.class_name, *identity, "yes" if installed else escape(f"no: {install_hint(spec.extra)}")]
        try:
            caps = engine_class(name).capabilities if installed else None
        except Exception as exc:  # an engine module that fails to import is reported, not fatal
            row[4] = escape(f"error: {exc}")
            caps = None
        if caps is None:
            row += ["?", "?", "?", "?", "?", "?"]
        else:
            row += [
                "yes" if caps.images else "no",
                "yes" if caps.streaming else "no",
                ",".join(sorted(caps.guided_decoding)) or "-",
                "yes" if caps.lora else "no",
                "yes" if caps.tools else "no",
                ", ".join(sorted(caps.generation_params)),
            ]
        table.add_row(*row)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    console.print(table)
    if verbose:
        from infermux.engines.machine import report

        sys.stdout.flush()
        print(render_report(report()), flush=True)


def render_report(sections: list[Section]) -> str:
    """Plain text, one ``label: value`` line per fact under each section's title: it pastes unchanged into
    an issue (no colours or box characters, no wrapping)."""
    lines: list[str] = []
    for section in sections:
        lines.append(f"\n[{section.title}]")
        width = max((len(label) for label, _ in section.rows), default=0)
        lines += [f"  {label + ':':<{width + 1}} {value}" for label, value in section.rows]
    return "\n".join(lines)
