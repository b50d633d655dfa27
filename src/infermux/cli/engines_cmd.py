"""``infermux engines``: what each engine needs and supports."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from infermux.errors import install_hint


def run_engines() -> None:
    from infermux.engines.registry import engine_class, engine_specs, is_available

    table = Table(title="infermux engines", show_lines=False)
    table.add_column("engine", no_wrap=True)
    table.add_column("class", no_wrap=True)
    for col in ("installed", "images", "stream", "guided", "lora", "tools", "generation params"):
        table.add_column(col, overflow="fold")
    for name, spec in engine_specs().items():
        installed = is_available(name)
        row = [name, spec.class_name, "yes" if installed else escape(f"no: {install_hint(spec.extra)}")]
        try:
            caps = engine_class(name).capabilities if installed else None
        except Exception as exc:  # an engine module that fails to import is reported, not fatal
            row[2] = escape(f"error: {exc}")
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
