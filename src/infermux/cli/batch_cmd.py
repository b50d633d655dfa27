"""``infermux batch submit|status|fetch``: run a job through a provider's Batch API (OpenAI files + batches).

Only typer is imported here; the engine and the Batch API code load when a command runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from infermux.cli.options import EXTRA_ARGS, ConfigOpt, EngineOpt, InputOpt, LogOpt

if TYPE_CHECKING:
    from infermux.configs.inference_config import InferenceConfig
    from infermux.engines.remote.openai.batch_state import BatchJobState

batch_app = typer.Typer(
    help="Submit a JSONL job to a Batch API (OPENAI, or any server with /v1/files and /v1/batches), "
    "poll it, and fetch the results.",
    no_args_is_help=True,
)

OutputOpt = typer.Option(
    None, "--output_path", "--output-path", help="Output JSONL; the batch record is kept beside it (OUTPUT.batch.json)."
)


def _setup(
    ctx: typer.Context,
    config: str | None,
    input_path: str | None,
    output_path: str | None,
    engine_name: str | None,
    log_level: str,
) -> tuple[InferenceConfig, Any]:
    from infermux.cli.common import fail, load_cli_config, setup_logging
    from infermux.engines.registry import build_engine, engine_class
    from infermux.jobs import check_output_path

    setup_logging(log_level)
    cfg = load_cli_config(config, list(ctx.args), engine=engine_name)
    cfg.input_path = input_path or cfg.input_path
    cfg.output_path = output_path or cfg.output_path
    if not cfg.output_path:
        fail("give --output_path: results and the batch record are written beside it.")
    if not engine_class(cfg.resolved_engine()).capabilities.batch_api:
        fail(f"the {cfg.resolved_engine()} engine does not support the Batch API; use OPENAI or REMOTE.")
    check_output_path(cfg.output_path, cfg.input_path)
    return cfg, build_engine(cfg)


def _command(name: str, ctx: typer.Context, config: str | None, engine: str | None, output_path: str) -> str:
    """The ``infermux batch NAME`` line to run next, with the same config, engine and overrides."""
    import shlex

    args = ["infermux", "batch", name, *(["-c", config] if config else []), *(["--engine", engine] if engine else [])]
    return shlex.join([*args, "--output_path", output_path, *ctx.args])


def _print_state(state: BatchJobState) -> None:
    print(f"batch record: {state.path}")
    for shard in state.shards:
        counts = shard.request_counts
        progress = f"{counts.get('completed', 0)}/{counts.get('total', shard.requests)} done" if counts else ""
        failed = f", {counts['failed']} failed" if counts.get("failed") else ""
        print(f"  {shard.batch_id}  {shard.status or 'unknown':<11} {shard.requests} requests  {progress}{failed}")
        for error in shard.errors:
            print(f"      {error}")
    if state.build_errors:
        print(f"  {len(state.build_errors)} rows were not sent (they fail at fetch; see the errors file)")


@batch_app.command("submit", context_settings=EXTRA_ARGS)
def submit(
    ctx: typer.Context,
    config: str | None = ConfigOpt,
    input_path: str | None = InputOpt,
    output_path: str | None = OutputOpt,
    engine: str | None = EngineOpt,
    log_level: str = LogOpt,
) -> None:
    """Upload the input as batch files and create their batches. Rerunning never resubmits a batch."""
    from infermux.cli.common import fail, user_errors

    with user_errors():
        cfg, eng = _setup(ctx, config, input_path, output_path, engine, log_level)
        if not cfg.input_path:
            fail("give --input_path (or input_path in the config).")
        state = eng.submit_batch(cfg.input_path, cfg.output_path, fingerprint=cfg.fingerprint())
        _print_state(state)
        print(f"check with: {_command('status', ctx, config, engine, str(cfg.output_path))}")


@batch_app.command("status", context_settings=EXTRA_ARGS)
def status(
    ctx: typer.Context,
    config: str | None = ConfigOpt,
    output_path: str | None = OutputOpt,
    engine: str | None = EngineOpt,
    log_level: str = LogOpt,
) -> None:
    """Poll every batch of the job recorded beside --output_path."""
    from infermux.cli.common import user_errors

    with user_errors():
        cfg, eng = _setup(ctx, config, None, output_path, engine, log_level)
        state = eng.batch_status(cfg.output_path)
        _print_state(state)
        print("all batches finished: run `infermux batch fetch`" if state.all_terminal else "still running")


@batch_app.command("fetch", context_settings=EXTRA_ARGS)
def fetch(
    ctx: typer.Context,
    config: str | None = ConfigOpt,
    input_path: str | None = InputOpt,
    output_path: str | None = OutputOpt,
    rerun_failed: bool = typer.Option(
        False, "--rerun-failed", "--rerun_failed", help="Then run the rows the batch failed online (same config)."
    ),
    engine: str | None = EngineOpt,
    log_level: str = LogOpt,
) -> None:
    """Download finished results into --output_path (by custom_id, in input order); failures go to the errors file."""
    from infermux.cli.common import EXIT_ROWS_FAILED, fail, user_errors

    with user_errors():
        cfg, eng = _setup(ctx, config, input_path, output_path, engine, log_level)
        if not cfg.input_path:
            fail("give --input_path: the input the batch was submitted with.")
        fingerprint = cfg.fingerprint()
        report = eng.fetch_batch(cfg.input_path, cfg.output_path, fingerprint=fingerprint)
        print(f"{report.done} rows done, {report.failed} failed, {report.pending} still in running batches")
        failed = report.failed
        if rerun_failed and failed:
            if report.pending:
                fail("some batches are still running: fetch again when `infermux batch status` says they finished.")
            print(f"rerunning {failed} failed rows online")
            import asyncio

            from infermux.jobs import run_job_file

            job = run_job_file(eng, cfg.input_path, cfg.output_path, generation=cfg.generation, fingerprint=fingerprint)
            result = asyncio.run(job)
            failed = result.failed
            print(f"online: {result.done} rows done, {result.failed} failed")
        if failed:
            print(f"failed rows are listed in {cfg.output_path}.errors.jsonl")
        if failed or report.pending:
            raise SystemExit(EXIT_ROWS_FAILED)
        print(f"wrote {cfg.output_path}")
