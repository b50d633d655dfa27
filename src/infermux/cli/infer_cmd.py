"""``infermux infer``: batch jobs with a progress bar, or chat."""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

from infermux.cli.common import (
    EXIT_BUDGET,
    EXIT_ROWS_FAILED,
    fail,
    greedy_loops_likely,
    load_cli_config,
    setup_logging,
    user_errors,
    warn_if_greedy_loops,
)
from infermux.configs.engine_type import engine_name

if TYPE_CHECKING:
    from collections.abc import Callable

    from infermux.configs.inference_config import InferenceConfig
    from infermux.errors import RowError
    from infermux.jobs.loop import BatchReport
    from infermux.jobs.rows import InputRow
    from infermux.types import Conversation, Message, Tool


def run_infer(
    *,
    config: str | None,
    overrides: list[str],
    input_path: str | None,
    output_path: str | None,
    interactive: bool,
    system_prompt: str | None,
    images: list[str],
    engine: str | None,
    strict: bool,
    log_level: str | None,
    ray: str | None = None,
    tools_path: str | None = None,
    no_cache: bool = False,
    max_cost: float | None = None,
    dry_run: bool = False,
    job_dir: str | None = None,
    table: dict[str, str | None] | None = None,
) -> None:
    setup_logging(log_level)
    with user_errors():
        cfg = load_cli_config(config, overrides, engine=engine, strict=strict)
        tools = None
        if tools_path:
            from infermux.jobs.rows import load_tools

            tools = load_tools(tools_path)
        if input_path:
            cfg.input_path = input_path
        if output_path:
            cfg.output_path = output_path
        if job_dir:
            cfg.job_dir = job_dir
        for field, value in (table or {}).items():  # --input_format, --prompt_column, ...
            if value is not None:
                setattr(cfg, field, value)
        if system_prompt and not interactive and cfg.input_path and _is_table(cfg):
            cfg.system_prompt, system_prompt = system_prompt, None  # a table's system message, not chat's
        if ray is not None:
            from infermux.configs.distributed_params import DistributedParams

            dist = cfg.distributed or DistributedParams()
            cfg.distributed = dist.model_copy(update={"address": ray}) if ray else dist
        if no_cache:
            cfg.cache = False
        if max_cost is not None:
            if max_cost < 0:
                fail("--max-cost must be a number of US dollars, 0 or more.")
            cfg.max_cost = max_cost
        if dry_run:
            if interactive or not cfg.input_path:
                fail("--dry-run plans a batch job: give --input_path (or input_path in the config).")
            from infermux.jobs.plan import plan_job

            print(plan_job(cfg, tools).describe(engine_name(cfg.resolved_engine()), cfg.model.model_name))
            return
        if interactive or not cfg.input_path:
            if ray is not None:
                fail("--ray runs batch jobs (--input_path and --output_path); chat runs on this machine.")
            if images and cfg.input_path:
                fail("--image applies to chat; batch rows carry their own images.")
            from infermux.cli.chat_cmd import run_chat

            run_chat(cfg, system_prompt=system_prompt, images=images, preset=config is None, tools=tools)
            return
        if system_prompt or images:
            fail(
                "--system-prompt and --image apply to chat (-i) and to table inputs with --prompt_column; "
                "JSONL rows carry their own messages."
            )
        warn_if_greedy_loops(cfg)
        if cfg.distributed is not None:  # --ray, or a distributed: section in the config
            from infermux.distributed.progress import run_with_progress

            code = _summarise(run_with_progress(cfg, tools), cfg)
        else:
            code = _run_batch(cfg, tools)
    if code:
        raise SystemExit(code)


def _is_table(cfg: InferenceConfig) -> bool:
    from infermux.jobs.tables import input_format

    return bool(cfg.prompt_column) or input_format(str(cfg.input_path), cfg.input_format) != "jsonl"


def _run_batch(cfg: InferenceConfig, tools: list[Tool] | None = None) -> int:
    answered: dict[int, Conversation | RowError] = {}
    on_row = None
    if not cfg.output_path:

        def on_row(row: InputRow, result: Conversation | RowError) -> None:
            answered[row.index] = result

    report = _with_progress(cfg, on_row, tools)
    from infermux.jobs.plan import remember_speed

    remember_speed(cfg, report)  # the next --dry-run's time estimate
    if not cfg.output_path:
        _print_answers(answered)
    return _summarise(report, cfg)


def _with_progress(
    cfg: InferenceConfig,
    on_row: Callable[[InputRow, Conversation | RowError], None] | None,
    tools: list[Tool] | None = None,
) -> BatchReport:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from infermux.jobs import run_config_job

    console = Console(stderr=True)
    progress = Progress(
        TextColumn("[bold]infer"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} rows/s"),
        TimeRemainingColumn(),
        TextColumn("failed {task.fields[failed]}  tokens {task.fields[tokens]}  {task.fields[cost]}"),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )
    task = progress.add_task("infer", total=None, rate="-", failed=0, tokens=0, cost="")

    def on_progress(report: BatchReport) -> None:
        elapsed = max(report.elapsed, 1e-6)
        progress.update(
            task,
            total=report.total,
            completed=report.resumed + report.done + report.failed,
            rate=f"{report.done / elapsed:.1f}",
            failed=report.failed,
            tokens=report.completion_tokens,
            cost=report.cost.describe() if report.cost.priced or report.cost.unpriced else "",
        )

    def line(text: str) -> None:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    # Not a terminal (nohup, CI, Slurm, Kubernetes): a plain line every progress_interval_s seconds.
    lines = None if console.is_terminal else line
    with progress:
        return asyncio.run(
            run_config_job(cfg, on_progress=on_progress, on_row=on_row, tools=tools, progress_lines=lines)
        )


def _print_answers(answered: dict[int, Conversation | RowError]) -> None:
    from infermux.errors import RowError

    for index in sorted(answered):
        result = answered[index]
        print(f"--- row {index + 1}")
        if isinstance(result, RowError):
            print(f"[failed: {result.kind}] {result.message}")
            continue
        for message in result.messages:
            print(f"{message.role.value}: {describe_message(message)}")


def describe_message(message: Message) -> str:
    """A message's text, then one ``[tool call ID] NAME(ARGUMENTS)`` line per call it makes."""
    lines = [message.text] if message.text or not message.tool_calls else []
    for call in message.tool_calls or []:
        lines.append(f"[tool call {call.id or '-'}] {call.function.name}({call.function.arguments})")
    return "\n".join(lines)


def _summarise(report: BatchReport, cfg: InferenceConfig) -> int:
    if getattr(report, "already_finished", False):
        sys.stderr.write(
            f"{report.output_path}: this job is already finished ({report.total} rows, same input and config): "
            "nothing was sent. Delete the output to run it again.\n"
        )
        return 0
    parts = [f"{report.done} answered"]
    if report.cached:
        parts.append(f"{report.cached} of them from the answer cache")
    if report.resumed:
        parts.append(f"{report.resumed} already done")
    if getattr(report, "changed", 0):
        parts.append(f"{report.changed} answered again because their row changed")
    if report.failed:
        parts.append(f"{report.failed} failed")
    where = f" → {report.output_path}" if report.output_path else ""
    sys.stderr.write(f"{', '.join(parts)} of {report.total} rows in {report.elapsed:.1f}s{where}\n")
    tokens = f"tokens: {report.prompt_tokens} in, {report.completion_tokens} out"
    from infermux.jobs.cost import PRICE_PROVIDERS

    if report.cost.priced:
        tokens += f"; cost: {report.cost.describe()}"
    elif str(getattr(engine := cfg.resolved_engine(), "value", engine)).upper() in PRICE_PROVIDERS:
        tokens += "; cost unknown (no price for this model)"  # engines without prices (local ones): nothing
    sys.stderr.write(tokens + "\n")
    if report.truncated:
        fix = "raise --generation.max_new_tokens to let them finish"
        if greedy_loops_likely(cfg):  # a small model decoding greedily mostly loops: more tokens would not help
            fix = (f"if they repeat a phrase (greedy decoding without a repetition guard), add "
                   f"--generation.frequency_penalty 0.3; if they were cut mid-answer, {fix}")  # fmt: skip
        sys.stderr.write(
            f"{report.truncated} answers stopped at max_new_tokens={cfg.generation.max_new_tokens} "
            f'(finish_reason "length"): {fix}.\n'
        )
    if report.budget_stopped:
        kept = f"kept in {report.partial_path}" if report.partial_path else "printed above"
        sys.stderr.write(
            f"stopped: --max-cost reached with {report.not_started} rows not started; the finished rows are "
            f"{kept}. Rerun the same command with a higher --max-cost to go on.\n"
        )
        return EXIT_BUDGET
    if report.failed:
        sys.stderr.write(
            f"failed rows are listed in {report.errors_path or 'the log above'}; "
            "rerun the same command to retry only them.\n"
        )
        return EXIT_ROWS_FAILED
    return 0
