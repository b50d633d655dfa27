"""Progress anywhere: plain lines for logs that are not terminals, and a JSON file for dashboards.

:func:`snapshot` turns a :class:`~infermux.jobs.loop.BatchReport` into a JSON-able dict (the schema of
``progress_path``); :func:`format_line` is the one-line form; :class:`ProgressTicker` emits both every
``interval`` seconds while a job runs, and once more when it ends. The JSON file is written to a
temporary file next to it and moved into place with ``os.replace``, so a reader never sees half a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infermux.jobs.loop import BatchReport

__all__ = ["ProgressTicker", "format_line", "snapshot", "write_json_atomically"]


def snapshot(report: BatchReport, state: str = "running") -> dict[str, Any]:
    """The job's progress: ``state`` is running, done, stopped (budget) or failed (rows failed)."""
    elapsed = max(report.elapsed, 1e-6)
    rate = report.done / elapsed
    left = report.not_started if state == "running" else 0
    eta = left / rate if rate > 0 and state == "running" else None
    if state == "running" and report.total and left == 0 and report.total == report.finished:
        eta = 0.0
    return {
        "state": state,
        "total": report.total,
        "finished": report.finished,
        "answered": report.done,
        "resumed": report.resumed,
        "cached": report.cached,
        "failed": report.failed,
        "truncated": report.truncated,
        "rows_per_s": round(rate, 3),
        "eta_s": None if eta is None else round(eta, 1),
        "elapsed_s": round(report.elapsed, 1),
        "prompt_tokens": report.prompt_tokens,
        "completion_tokens": report.completion_tokens,
        "cost_usd": round(report.cost.dollars, 6) if report.cost.priced else None,
        # Nothing priced or unpriced (a local engine, which has no prices): no cost to speak of.
        "cost": report.cost.describe() if report.cost.priced or report.cost.unpriced else "",
        "budget_stopped": report.budget_stopped,
        "output_path": report.output_path,
        "updated_at": time.time(),
    }


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def format_line(snap: dict[str, Any]) -> str:
    """``progress 120/1000 (12%) 3.4 rows/s ETA 4m18s failed 2 cached 5 tokens 1234 in 567 out $0.0123``."""
    total = snap["total"] or 0
    pct = f" ({100 * snap['finished'] / total:.0f}%)" if total else ""
    return (
        f"progress {snap['finished']}/{total}{pct} {snap['rows_per_s']:.1f} rows/s ETA {_duration(snap['eta_s'])} "
        f"failed {snap['failed']} cached {snap['cached']} tokens {snap['prompt_tokens']} in "
        f"{snap['completion_tokens']} out {snap['cost']}"
    ).rstrip()


def write_json_atomically(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and ``os.replace``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
            fh.write("\n")
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class ProgressTicker:
    """Every ``interval`` seconds while a job runs: a line to ``lines`` and/or the JSON to ``path``.

    Feed it the job's report with :meth:`see` (an ``on_progress`` callback); run :meth:`run` as a task
    for the job's duration; call :meth:`finish` with the final report.
    """

    def __init__(self, interval: float, *, lines: Callable[[str], None] | None = None, path: str | None = None) -> None:
        self.interval = interval
        self.lines = lines
        self.path = path
        self.report: BatchReport | None = None

    @property
    def active(self) -> bool:
        return self.lines is not None or self.path is not None

    def see(self, report: BatchReport) -> None:
        self.report = report

    def emit(self, state: str = "running") -> None:
        if self.report is None:
            return
        snap = snapshot(self.report, state)
        # Every row finished but the job not yet returned (closing the engine, assembling the output): the
        # line would repeat the final one that finish() writes, so only the JSON file is updated.
        last = state == "running" and bool(self.report.total) and self.report.finished >= self.report.total
        if self.lines is not None and not last:
            self.lines(format_line(snap))
        if self.path is not None:
            try:
                write_json_atomically(self.path, snap)
            except OSError as exc:  # a dashboard file must never stop the job
                import logging

                logging.getLogger("infermux.jobs").warning("progress_path %s: %s", self.path, exc)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.emit()

    def finish(self, report: BatchReport) -> None:
        self.report = report
        state = "stopped" if report.budget_stopped else ("failed" if report.failed else "done")
        self.emit(state)
