"""``infermux engines``: a table of every engine that fits 80 columns; ``NAME`` for one engine's details;
``--json`` for scripts; ``--verbose`` adds what this machine is."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infermux.errors import install_hint

if TYPE_CHECKING:
    from infermux.engines.machine import Section
    from infermux.engines.registry import EngineSpec

#: The table's columns: (title, width). The widest engine name (HUGGING_FACE_ROUTER) is 19 characters.
_COLUMNS = (("engine", 19), ("installed", 13), ("stream", 6), ("images", 6), ("tools", 5), ("lora", 4), ("guided", 0))
_FOOTER = (
    "details: infermux engines NAME · for scripts: --json · this machine: --verbose\n"
    f"installed 'no [EXTRA]': {install_hint('EXTRA')}"
)


def run_engines(*, name: str | None = None, as_json: bool = False, verbose: bool = False) -> None:
    from infermux.cli.common import fail
    from infermux.engines.registry import engine_specs

    specs = engine_specs()
    if name is not None:
        key = _lookup(name, specs)
        if key is None:
            from infermux.configs.engine_type import unknown_engine

            fail(unknown_engine(name, specs))
        specs = {key: specs[key]}
    facts = [_facts(key, spec) for key, spec in specs.items()]
    if as_json:
        print(json.dumps(facts[0] if name is not None else facts, indent=1))
    elif name is not None:
        print(_detail(facts[0], specs[facts[0]["engine"]]))
    else:
        print(render_table(facts))
    if verbose:
        from infermux.engines.machine import report

        sys.stdout.flush()
        print(render_report(report()), flush=True)


def _lookup(name: str, specs: dict[str, EngineSpec]) -> str | None:
    from infermux.configs.engine_type import InferenceEngineType

    key = name.strip().upper()
    if key in InferenceEngineType.__members__:
        key = InferenceEngineType[key].value  # an alias such as GEMINI names its member's engine
    return key if key in specs else None


def _facts(name: str, spec: EngineSpec) -> dict[str, Any]:
    """What the table, the detail view and ``--json`` show of one engine (capabilities None: not installed
    or failing to import; ``error`` then says which)."""
    from infermux.engines.registry import engine_class, is_available

    facts: dict[str, Any] = {
        "engine": name,
        "class": spec.target,
        "kind": spec.kind,  # from the engine's identity row (a plugin's row says no more than that it is one)
        "plugin": spec.plugin,
        "batch_client": spec.batch,
        "extra": spec.extra,
        "install": install_hint(spec.extra),
        "installed": is_available(name),
        "error": None,
        "capabilities": None,
    }
    if not facts["installed"]:
        return facts
    try:
        caps = engine_class(name).capabilities
    except Exception as exc:  # an engine module that fails to import is reported, not fatal
        facts["error"] = f"{type(exc).__name__}: {exc}"
        return facts
    facts["capabilities"] = {
        "streaming": caps.streaming,
        "images": caps.images,
        "tools": caps.tools,
        "lora": caps.lora,
        "guided_decoding": sorted(caps.guided_decoding),
        "generation_params": sorted(caps.generation_params),
        "batch_api": caps.batch_api,
    }
    return facts


def render_table(facts: list[dict[str, Any]]) -> str:
    """One line per engine in at most 80 columns, plain text (no box characters: it pastes anywhere)."""

    def row(cells: list[str]) -> str:
        padded = [f"{cell:<{width}}" for cell, (_, width) in zip(cells, _COLUMNS, strict=True)]
        return " ".join(padded).rstrip()

    lines = [row([title for title, _ in _COLUMNS])]
    for fact in facts:
        caps = fact["capabilities"]
        installed = "yes" if fact["installed"] else f"no [{fact['extra']}]"
        installed = "error" if fact["error"] else installed
        if caps is None:
            lines.append(row([fact["engine"], installed, "?", "?", "?", "?", "?"]))
            continue
        yes = {True: "yes", False: "no"}
        lines.append(
            row(
                [
                    fact["engine"],
                    installed,
                    yes[caps["streaming"]],
                    yes[caps["images"]],
                    yes[caps["tools"]],
                    yes[caps["lora"]],
                    ",".join(caps["guided_decoding"]) or "-",
                ]
            )
        )
    return "\n".join(lines) + "\n\n" + _FOOTER


def _detail(fact: dict[str, Any], spec: EngineSpec) -> str:
    """The engine's section of docs/engines.md as plain text, wrapped to 80 columns, and whether it is
    installed here."""
    from infermux.engines.docs import section_lines

    state = "yes" if fact["installed"] and not fact["error"] else fact["error"] or f"no: {fact['install']}"
    root = Path(__file__).resolve().parents[3]  # a source checkout has configs/examples/ there
    lines = section_lines(fact["engine"], spec, root)
    out = [f"{lines[0].removeprefix('## ')} · installed: {state}"]
    for line in lines[1:]:
        text = _plain(line)
        if not text:
            continue
        bullet = text.startswith("- ")
        out += textwrap.wrap(text, 80, subsequent_indent="    " if bullet else "", break_on_hyphens=False)
    out.append(f"more: docs/engines.md#{fact['engine'].lower()}")
    return "\n".join(out)


def _plain(markdown: str) -> str:
    """Markdown without backticks, and links as their text."""
    return re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", markdown).replace("`", "")


def render_report(sections: list[Section]) -> str:
    """Plain text, one ``label: value`` line per fact under each section's title: it pastes unchanged into
    an issue (no colours or box characters, no wrapping)."""
    lines: list[str] = []
    for section in sections:
        lines.append(f"\n[{section.title}]")
        width = max((len(label) for label, _ in section.rows), default=0)
        lines += [f"  {label + ':':<{width + 1}} {value}" for label, value in section.rows]
    return "\n".join(lines)
