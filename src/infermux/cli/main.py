"""The ``infermux`` command: a thin typer app whose commands import their work lazily."""

from __future__ import annotations

import sys

import typer

from infermux.cli.batch_cmd import batch_app  # light: typer only; its commands import their work lazily
from infermux.cli.common import command_args
from infermux.cli.options import (
    EXTRA_ARGS,
    ConfigOpt,
    DryRunOpt,
    EngineOpt,
    ImageOpt,
    InputOpt,
    LogOpt,
    MaxCostOpt,
    NoCacheOpt,
    OutputOpt,
    StrictOpt,
    SystemPromptOpt,
    ToolsOpt,
)

app = typer.Typer(
    name="infermux",
    help="Run LLM inference on local or remote engines: batch JSONL jobs, chat, an OpenAI-compatible server.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
config_app = typer.Typer(help="Inspect configs without loading a model.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(batch_app, name="batch")


@app.command(context_settings=EXTRA_ARGS)
def infer(
    ctx: typer.Context,
    config: str | None = ConfigOpt,
    input_path: str | None = InputOpt,
    output_path: str | None = OutputOpt,
    interactive: bool = typer.Option(False, "-i", "--interactive", help="Chat instead of a batch job."),
    system_prompt: str | None = SystemPromptOpt,
    image: list[str] | None = ImageOpt,
    engine: str | None = EngineOpt,
    strict: bool = StrictOpt,
    ray: str | None = typer.Option(
        None,
        "--ray",
        metavar="[ADDRESS]",
        help="Shard the batch job over a Ray cluster (HOST:PORT of its head; no value: distributed.address, "
        "RAY_ADDRESS, or a one-machine cluster). Needs infermux[ray].",
    ),
    tools: str | None = ToolsOpt,
    log_level: str | None = LogOpt,
    no_cache: bool = NoCacheOpt,
    max_cost: float | None = MaxCostOpt,
    dry_run: bool = DryRunOpt,
    job_dir: str | None = typer.Option(
        None,
        "--job_dir",
        "--job-dir",
        help="Local folder for the job's partial and errors files (default: beside the output; for a URI output "
        "such as s3:// or gs://, infermux-jobs/NAME-HASH under the current folder).",
    ),
    input_format: str | None = typer.Option(
        None, "--input_format", "--input-format", help="jsonl, parquet or dataset (default: from the input's name)."
    ),
    output_format: str | None = typer.Option(
        None,
        "--output_format",
        "--output-format",
        help="jsonl, parquet or dataset (default: from the output's name; dataset for a path ending in /).",
    ),
    prompt_column: str | None = typer.Option(
        None, "--prompt_column", "--prompt-column", help="Table input: the column with each row's user message."
    ),
    system_column: str | None = typer.Option(
        None, "--system_column", "--system-column", help="Table input: the column with each row's system message."
    ),
    id_column: str | None = typer.Option(
        None, "--id_column", "--id-column", help="Table input: the column with each row's id (used by resume)."
    ),
    generation_column: str | None = typer.Option(
        None,
        "--generation_column",
        "--generation-column",
        help="Table input: the column with each row's generation settings (default: a 'generation' column).",
    ),
) -> None:
    """Run a batch job (--input_path) or chat (-i). Extra --section.field VALUE options override the config."""
    from infermux.cli.infer_cmd import run_infer

    run_infer(
        table={
            "input_format": input_format,
            "output_format": output_format,
            "prompt_column": prompt_column,
            "system_column": system_column,
            "id_column": id_column,
            "generation_column": generation_column,
        },
        job_dir=job_dir,
        ray=ray,
        tools_path=tools,
        no_cache=no_cache,
        max_cost=max_cost,
        dry_run=dry_run,
        config=config,
        overrides=command_args(ctx),
        input_path=input_path,
        output_path=output_path,
        interactive=interactive,
        system_prompt=system_prompt,
        images=image or [],
        engine=engine,
        strict=strict,
        log_level=log_level,
    )


@app.command(context_settings=EXTRA_ARGS)
def chat(
    ctx: typer.Context,
    config: str | None = ConfigOpt,
    system_prompt: str | None = SystemPromptOpt,
    image: list[str] | None = ImageOpt,
    engine: str | None = EngineOpt,
    strict: bool = StrictOpt,
    tools: str | None = ToolsOpt,
    log_level: str | None = LogOpt,
) -> None:
    """Chat with a model (same as `infer -i`). Reads stdin line by line when it is not a terminal. Extra
    --section.field VALUE options override the config (e.g. --generation.temperature 0)."""
    from infermux.cli.infer_cmd import run_infer

    run_infer(
        tools_path=tools,
        config=config,
        overrides=command_args(ctx),
        input_path=None,
        output_path=None,
        interactive=True,
        system_prompt=system_prompt,
        images=image or [],
        engine=engine,
        strict=strict,
        log_level=log_level,
    )


@app.command(context_settings=EXTRA_ARGS)
def serve(
    ctx: typer.Context,
    config: str | None = ConfigOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; other than loopback needs --api-key."),
    port: int = typer.Option(8000, "--port", help="TCP port (0 picks a free one)."),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="INFERMUX_API_KEY", show_envvar=True, help="Key clients must send as a Bearer token."
    ),
    engine: str | None = EngineOpt,
    model_name: str | None = typer.Option(
        None, "--served-model-name", help="Model name clients send (default: the config's model_name)."
    ),
    max_body_mb: float = typer.Option(8.0, "--max-body-mb", help="Largest request body accepted, in MiB."),
    body_timeout: float = typer.Option(30.0, "--body-timeout", help="Seconds a request body may take to arrive."),
    max_messages: int = typer.Option(2048, "--max-messages", help="Most messages in one request."),
    max_prompt_chars: int = typer.Option(
        4 * 2**20, "--max-prompt-chars", help="Most characters of text in one request's messages."
    ),
    allowed_host: list[str] = typer.Option(
        [], "--allowed-host", help="A name clients may reach the server by (Host), besides IPs and localhost; '*': any."
    ),
    cors_origin: list[str] = typer.Option(
        [], "--cors-origin", help="A web origin (https://app.example) whose pages may call the API; off by default."
    ),
    batch_dir: str | None = typer.Option(
        None,
        "--batch-dir",
        help="Where the Batch API keeps files and batches (default ~/.local/state/infermux/batches).",
    ),
    batch_concurrency: int = typer.Option(4, "--batch-concurrency", help="Batch API requests run at once."),
    log_level: str | None = LogOpt,
) -> None:
    """Serve the config's model over an OpenAI-compatible HTTP API, with a chat page at /."""
    from infermux.cli.serve_cmd import run_serve

    run_serve(
        config=config,
        overrides=command_args(ctx),
        engine=engine,
        host=host,
        port=port,
        api_key=api_key,
        model_name=model_name,
        max_body_mb=max_body_mb,
        log_level=log_level,
        body_timeout=body_timeout,
        max_messages=max_messages,
        max_prompt_chars=max_prompt_chars,
        allowed_hosts=allowed_host,
        cors_origins=cors_origin,
        batch_dir=batch_dir,
        batch_concurrency=batch_concurrency,
    )


@config_app.command("check", context_settings=EXTRA_ARGS)
def config_check(
    ctx: typer.Context,
    config: str | None = ConfigOpt,
    engine: str | None = EngineOpt,
    log_level: str | None = LogOpt,
) -> None:
    """Validate a config and print it resolved, with the engine it selects (no model is loaded)."""
    from infermux.cli.config_cmd import run_config_check

    run_config_check(config, command_args(ctx), log_level, engine=engine)


@app.command()
def engines(
    name: str | None = typer.Argument(None, metavar="[NAME]", help="One engine's details (e.g. LLAMACPP)."),
    as_json: bool = typer.Option(False, "--json", help="Print the facts as JSON, for scripts."),
    verbose: bool = typer.Option(
        False,
        "--verbose",
        "-v",
        help="Also report this machine (CPU, flags, memory) and what llama.cpp, torch and vLLM detected and "
        "chose on it (instruction sets, AMX, threads): plain text to paste into a bug report. Imports them.",
    ),
) -> None:
    """List every engine, whether its extra is installed, and what it supports (NAME: one engine in detail)."""
    from infermux.cli.engines_cmd import run_engines

    run_engines(name=name, as_json=as_json, verbose=verbose)


@app.command()
def convert(
    input_path: str = typer.Argument(..., metavar="INPUT", help="JSONL, a Parquet file or folder, or a dataset."),
    output_path: str = typer.Argument(
        ..., metavar="OUTPUT", help="out.jsonl, out.parquet, or a dataset folder (a path ending in /)."
    ),
    input_format: str | None = typer.Option(
        None, "--input_format", "--input-format", help="jsonl, parquet or dataset (default: from INPUT)."
    ),
    output_format: str | None = typer.Option(
        None, "--output_format", "--output-format", help="jsonl, parquet or dataset (default: from OUTPUT)."
    ),
) -> None:
    """Copy rows from one format into another (JSONL, Parquet, dataset folder), e.g. a Parquet output as JSONL."""
    from infermux.cli.common import user_errors
    from infermux.jobs.convert import convert as run_convert

    with user_errors():
        report = run_convert(input_path, output_path, input_format_name=input_format, output_format_name=output_format)
    print(f"wrote {report.rows} rows ({report.input_format} -> {report.output_format}) to {report.output}")


@app.command()
def version() -> None:
    """Print the version."""
    from infermux import __version__

    print(__version__)


def _optional_values(argv: list[str]) -> list[str]:
    """``--ray`` may come without its value (typer has no optional option values): give it an empty one."""
    out = []
    for i, arg in enumerate(argv):
        bare = arg == "--ray" and (i + 1 == len(argv) or argv[i + 1].startswith("-"))
        out.append("--ray=" if bare else arg)
    return out


def main() -> None:
    try:
        app(args=_optional_values(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        sys.exit(130)


if __name__ == "__main__":
    main()
