"""The command-line options every command shares, declared once (typer only: ``--help`` stays light).

``infer``, ``chat``, ``config check`` and ``batch submit|status|fetch`` reuse these; a command's own
options stay next to it. Extra ``--section.field VALUE`` arguments (``EXTRA_ARGS``) override the config.
``--strict`` is a flag of ``infer`` and ``chat``; ``config check`` and ``batch`` take it as the override
``--strict true`` (as they always did).
"""

from __future__ import annotations

from typing import Any

import typer

__all__ = [
    "EXTRA_ARGS",
    "ConfigOpt",
    "DryRunOpt",
    "EngineOpt",
    "ImageOpt",
    "InputOpt",
    "LogOpt",
    "MaxCostOpt",
    "NoCacheOpt",
    "OutputOpt",
    "StrictOpt",
    "SystemPromptOpt",
    "ToolsOpt",
]

#: Context settings of commands that take ``--section.field VALUE`` overrides.
EXTRA_ARGS: dict[str, Any] = {"allow_extra_args": True, "ignore_unknown_options": True}

ConfigOpt: Any = typer.Option(None, "-c", "--config", help="YAML config (Oumi InferenceConfig format).")
InputOpt: Any = typer.Option(
    None,
    "--input_path",
    "--input-path",
    help="Input: Conversation JSONL, a Parquet file or folder, or a save_to_disk folder; a path or a URI such as "
    "s3://bucket/in.jsonl (default: the config's).",
)
OutputOpt: Any = typer.Option(
    None,
    "--output_path",
    "--output-path",
    help="Output JSONL (or Parquet: a .parquet name): a path, or a URI such as s3://bucket/out.jsonl "
    "(default: the config's).",
)
EngineOpt: Any = typer.Option(None, "--engine", help="Engine name (overrides the config).")
StrictOpt: Any = typer.Option(False, "--strict", help="Unsupported parameters are errors, not warnings.")
LogOpt: Any = typer.Option(
    None,
    "--log-level",
    "--log_level",
    help="debug, info, warning or error (default: info for infermux, warning for the engine libraries).",
)
SystemPromptOpt: Any = typer.Option(None, "--system-prompt", "--system_prompt", help="System prompt for chat.")
ImageOpt: Any = typer.Option(None, "--image", help="Image path or URL for the first turn.")
ToolsOpt: Any = typer.Option(
    None, "--tools", help="JSON file with a list of tools, given to every conversation that has none."
)
NoCacheOpt: Any = typer.Option(False, "--no-cache", help="Do not read or write the per-row answer cache.")
MaxCostOpt: Any = typer.Option(
    None, "--max-cost", "--max_cost", help="Budget in USD: start no row that would pass it (exit 4, resumable)."
)
DryRunOpt: Any = typer.Option(
    False, "--dry-run", help="Print rows, estimated tokens, cost (online and batch API) and time; send nothing."
)
