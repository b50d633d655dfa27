"""Progress of a job on a cluster, shown by the driver: rows/s, ETA, failures, tokens, rows per replica.

A progress bar on a terminal; otherwise (logs, CI) one line every ``progress_interval_s`` seconds while
rows are left, and the final line once when the job ends (on a terminal the bar's last state is that line).
"""

from __future__ import annotations

import logging
import time

from infermux.configs.inference_config import InferenceConfig
from infermux.distributed.driver import ClusterReport, run_on_ray
from infermux.jobs.api import prepare_input
from infermux.jobs.tables import TableColumns
from infermux.types import Tool

__all__ = ["describe", "run_with_progress"]

logger = logging.getLogger("infermux.distributed")


def describe(report: ClusterReport) -> str:
    """One line: finished/total, rows/s, ETA, failures, tokens and rows per replica."""
    finished = report.resumed + report.done + report.failed
    rate = (report.done + report.failed) / max(report.elapsed, 1e-6)
    left = report.total - finished
    eta = f"{left / rate:.0f}s" if rate > 0 else "-"
    per = " ".join(f"{count}" for _, count in sorted(report.per_replica.items()))
    return (
        f"{finished}/{report.total} rows, {rate:.1f} rows/s, ETA {eta}, failed {report.failed}, "
        f"tokens {report.prompt_tokens}+{report.completion_tokens}, per replica [{per}]"
        + (f", resent {report.resent_rows}" if report.resent_rows else "")
    )


def run_with_progress(cfg: InferenceConfig, tools: list[Tool] | None = None) -> ClusterReport:
    """Validate the input (before Ray starts), then run the job with a progress display; ``tools`` go to
    every row without its own."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    assert cfg.input_path is not None
    offered: list[bool] = []
    row_ids = prepare_input(cfg.input_path, offered_tools=offered, columns=TableColumns.of(cfg))
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("[bold]infer on ray"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[line]}"),
        console=console,
        disable=not console.is_terminal,
    )
    task = progress.add_task("infer", total=len(row_ids), line="starting replicas")
    last_log = [time.monotonic()]

    def on_progress(report: ClusterReport) -> None:
        finished = report.resumed + report.done + report.failed
        line = describe(report)
        progress.update(task, completed=finished, line=line.split(", ", 1)[1])
        if finished >= report.total:  # the final line is written once, below
            return
        if not console.is_terminal and time.monotonic() - last_log[0] >= cfg.progress_interval_s:
            last_log[0] = time.monotonic()
            logger.info("%s", line)

    with progress:
        report = run_on_ray(cfg, row_ids=row_ids, on_progress=on_progress, tools=tools, offers_tools=any(offered))
    if not console.is_terminal:
        logger.info("%s", describe(report))
    for info in report.replicas:
        logger.info(
            "replica %d (node %s, pid %d): %d rows",
            info["index"],
            info["node"][:12],
            info["pid"],
            report.per_replica.get(info["index"], 0),
        )
    return report
