"""``infermux batch submit|status|fetch|cancel|list|run``: a job through a provider's batch API (OpenAI's
files + batches, Anthropic's Message Batches).

Only typer is imported here; the engine and the batch runner (:mod:`infermux.jobs.provider_batch`) load
when a command runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from infermux.cli.options import EXTRA_ARGS, ConfigOpt, EngineOpt, InputOpt, LogOpt

if TYPE_CHECKING:
    from infermux.configs.inference_config import InferenceConfig
    from infermux.engines.base import InferenceEngine
    from infermux.jobs.batch_state import BatchJobState
    from infermux.jobs.tables import TableColumns

batch_app = typer.Typer(
    help="Run a JSONL job through a provider's batch API (see `infermux engines NAME` or docs/batch-api.md for "
    "which engines have one): submit, status, fetch, cancel, list, or all at once with run.",
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
    log_level: str | None,
) -> tuple[InferenceConfig, InferenceEngine]:
    from infermux.cli.common import command_args, fail, load_cli_config, setup_logging
    from infermux.engines.registry import batch_engines, build_engine, engine_class
    from infermux.jobs import check_output_path

    setup_logging(log_level)
    cfg = load_cli_config(config, command_args(ctx), engine=engine_name)
    cfg.input_path = input_path or cfg.input_path
    cfg.output_path = output_path or cfg.output_path
    if not cfg.output_path:
        fail("give --output_path: results and the batch record are written beside it.")
    from infermux.jobs.storage import is_uri

    if is_uri(cfg.output_path):
        fail("infermux batch writes its batch record beside --output_path: give a local path (URIs such as s3:// "
             "work with `infermux infer`).")  # fmt: skip
    if not engine_class(cfg.resolved_engine()).capabilities.batch_api:
        fail(f"the {cfg.resolved_engine()} engine does not support the Batch API; use {batch_engines()}.")
    check_output_path(cfg.output_path, cfg.input_path)
    return cfg, build_engine(cfg)


def _columns(cfg: InferenceConfig) -> TableColumns:
    """How a table input's columns become rows (the config's ``prompt_column``, ...)."""
    from infermux.jobs.tables import TableColumns

    return TableColumns.of(cfg)


def _command(name: str, ctx: typer.Context, config: str | None, engine: str | None, output_path: str) -> str:
    """The ``infermux batch NAME`` line to run next, with the same config, engine and overrides."""
    import shlex

    args = ["infermux", "batch", name, *(["-c", config] if config else []), *(["--engine", engine] if engine else [])]
    return shlex.join([*args, "--output_path", output_path, *ctx.args])


def _print_state(state: BatchJobState) -> None:
    print(f"batch record: {state.path}")
    for shard in state.shards:
        counts = shard.request_counts
        done = counts.get("completed", counts.get("succeeded", 0))
        progress = f"{done}/{counts.get('total', shard.requests)} done" if counts else ""
        lost = sum(counts.get(k, 0) for k in ("failed", "errored", "expired", "canceled"))
        failed = f", {lost} failed or expired" if lost else ""
        print(
            f"  {shard.batch_id or '-'}  {shard.status or 'unknown':<11} {shard.requests} requests  {progress}{failed}"
        )
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
    log_level: str | None = LogOpt,
) -> None:
    """Upload the input as batch files and create their batches. Rerunning never resubmits a batch."""
    from infermux.cli.common import fail, user_errors
    from infermux.jobs import provider_batch

    with user_errors():
        cfg, eng = _setup(ctx, config, input_path, output_path, engine, log_level)
        if not cfg.input_path:
            fail("give --input_path (or input_path in the config).")
        state = provider_batch.submit(
            eng, cfg.input_path, str(cfg.output_path), fingerprint=cfg.fingerprint(), columns=_columns(cfg)
        )
        _print_state(state)
        print(f"check with: {_command('status', ctx, config, engine, str(cfg.output_path))}")


@batch_app.command("status", context_settings=EXTRA_ARGS)
def status(
    ctx: typer.Context,
    config: str | None = ConfigOpt,
    output_path: str | None = OutputOpt,
    engine: str | None = EngineOpt,
    log_level: str | None = LogOpt,
) -> None:
    """Poll every batch of the job recorded beside --output_path."""
    from infermux.cli.common import user_errors
    from infermux.jobs import provider_batch

    with user_errors():
        cfg, eng = _setup(ctx, config, None, output_path, engine, log_level)
        state = provider_batch.status(eng, str(cfg.output_path))
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
    log_level: str | None = LogOpt,
) -> None:
    """Download finished results into --output_path (by custom_id, in input order); failures go to the errors file."""
    from infermux.cli.common import EXIT_ROWS_FAILED, fail, user_errors
    from infermux.jobs import provider_batch

    with user_errors():
        cfg, eng = _setup(ctx, config, input_path, output_path, engine, log_level)
        if not cfg.input_path:
            fail("give --input_path: the input the batch was submitted with.")
        fingerprint = cfg.fingerprint()
        report = provider_batch.fetch(
            eng, cfg.input_path, str(cfg.output_path), fingerprint=fingerprint, columns=_columns(cfg),
            output_format=cfg.output_format,
        )  # fmt: skip
        print(f"{report.done} rows done, {report.failed} failed, {report.pending} still in running batches")
        failed = report.failed
        if rerun_failed and failed:
            if report.pending:
                fail("some batches are still running: fetch again when `infermux batch status` says they finished.")
            print(f"rerunning {failed} failed rows online")
            import asyncio

            from infermux.jobs import run_job_file

            # every failed row, as asked (batch run skips those refused as invalid)
            job = run_job_file(
                eng, cfg.input_path, cfg.output_path, generation=cfg.generation, fingerprint=fingerprint,
                columns=_columns(cfg), output_format=cfg.output_format,
            )  # fmt: skip
            result = asyncio.run(job)
            failed = result.failed
            print(f"online: {result.done} rows done, {result.failed} failed")
        if failed:
            print(f"failed rows are listed in {cfg.output_path}.errors.jsonl")
        if failed or report.pending:
            raise SystemExit(EXIT_ROWS_FAILED)
        print(f"wrote {cfg.output_path}")


@batch_app.command("cancel", context_settings=EXTRA_ARGS)
def cancel(
    ctx: typer.Context,
    config: str | None = ConfigOpt,
    output_path: str | None = OutputOpt,
    engine: str | None = EngineOpt,
    log_level: str | None = LogOpt,
) -> None:
    """Cancel the unfinished batches of the job recorded beside --output_path (fetch what they answered)."""
    from infermux.cli.common import fail, user_errors
    from infermux.jobs import provider_batch

    with user_errors():
        cfg, eng = _setup(ctx, config, None, output_path, engine, log_level)
        if not provider_batch.client_for(eng).can_cancel:
            fail(f"cancel is not available for {eng.name}; cancel in the provider's console.")
        _print_state(provider_batch.cancel(eng, str(cfg.output_path)))
        print("then run `infermux batch fetch` (add --rerun-failed to answer the canceled rows online)")


@batch_app.command("list", context_settings=EXTRA_ARGS)
def list_(
    ctx: typer.Context,
    config: str | None = ConfigOpt,
    engine: str | None = EngineOpt,
    limit: int = typer.Option(20, "--limit", min=1, help="How many of the most recent batches to show."),
    log_level: str | None = LogOpt,
) -> None:
    """List the account's most recent batches, whatever job created them."""
    from infermux.cli.common import command_args, fail, load_cli_config, setup_logging, user_errors
    from infermux.engines.registry import build_engine
    from infermux.jobs import provider_batch

    setup_logging(log_level)
    with user_errors():
        eng = build_engine(load_cli_config(config, command_args(ctx), engine=engine))
        client = eng.batch_client()
        if client is None or not client.can_list:
            fail(f"list is not available for {eng.name}.")
        for batch in provider_batch.list_batches(eng, limit):
            counts = batch.get("request_counts") or {}
            shown = " ".join(f"{k}={v}" for k, v in counts.items() if v)
            status = batch.get("processing_status", batch.get("status"))
            print(f"{batch['id']}  {status}  {batch.get('created_at')}  {shown}")


@batch_app.command("run", context_settings=EXTRA_ARGS)
def run(
    ctx: typer.Context,
    config: str | None = ConfigOpt,
    input_path: str | None = InputOpt,
    output_path: str | None = OutputOpt,
    engine: str | None = EngineOpt,
    poll_interval: float = typer.Option(
        30.0, "--poll-interval", "--poll_interval", min=0.0, help="Seconds between status checks."
    ),
    log_level: str | None = LogOpt,
) -> None:
    """Submit, wait (printing progress), fetch, and answer online the rows the batch failed or let expire.

    Resumable: rerun the same command after an interruption; no row is submitted or answered twice."""
    from infermux.cli.common import EXIT_ROWS_FAILED, fail, user_errors
    from infermux.jobs.batch_run import run_batch_job

    with user_errors():
        cfg, eng = _setup(ctx, config, input_path, output_path, engine, log_level)
        if not cfg.input_path:
            fail("give --input_path (or input_path in the config).")

        def show(state: BatchJobState) -> None:
            total = sum(s.requests for s in state.shards)
            done = sum(s.request_counts.get("completed", s.request_counts.get("succeeded", 0)) for s in state.shards)
            ended = sum(1 for s in state.shards if s.terminal)
            print(f"batch: {ended}/{len(state.shards)} batches ended, {done}/{total} requests answered", flush=True)

        try:
            report = run_batch_job(eng, cfg, poll_interval=poll_interval, on_status=show)
        finally:
            eng.close()
        print(f"batch: {report.batch_done} rows answered, {report.batch_failed} not")
        if report.online is not None:
            print(f"online: {report.online.done} rows answered, {report.online.failed} failed")
        if report.failed:
            print(f"failed rows are listed in {cfg.output_path}.errors.jsonl")
            raise SystemExit(EXIT_ROWS_FAILED)
        print(f"wrote {cfg.output_path}")
