"""Progress lines of a one-machine job: one line per interval while rows are left, the final line once."""

from __future__ import annotations

import json
from pathlib import Path

from infermux.jobs.loop import BatchReport
from infermux.jobs.progress import ProgressTicker


def test_the_final_line_is_written_once(tmp_path: Path) -> None:
    """A tick after the last row (the engine still closing) would repeat the final line: it writes the
    JSON file only."""
    lines: list[str] = []
    path = tmp_path / "progress.json"
    ticker = ProgressTicker(10.0, lines=lines.append, path=str(path))
    report = BatchReport(total=4, done=2)
    ticker.see(report)
    ticker.emit()
    report.done = 4
    ticker.emit()  # every row finished, the job not yet returned
    assert json.loads(path.read_text())["finished"] == 4
    ticker.finish(report)
    assert [line.split(" ")[1] for line in lines] == ["2/4", "4/4"]
    assert json.loads(path.read_text())["state"] == "done"


def test_an_empty_job_still_gets_its_final_line() -> None:
    lines: list[str] = []
    ticker = ProgressTicker(10.0, lines=lines.append)
    ticker.finish(BatchReport(total=0))
    assert len(lines) == 1 and lines[0].startswith("progress 0/0")


def test_a_local_job_line_says_nothing_of_cost_a_priced_one_does() -> None:
    """A local engine has no prices: its lines end with the token counts, not "cost unknown"."""
    lines: list[str] = []
    ticker = ProgressTicker(10.0, lines=lines.append)
    ticker.finish(BatchReport(total=2, done=2, completion_tokens=7))
    assert lines[-1].endswith("tokens 0 in 7 out") and "cost" not in lines[-1]
    priced = BatchReport(total=2, done=2)
    priced.cost.add(0.5)
    priced.cost.add(None)  # a row without a price
    ticker.finish(priced)
    assert lines[-1].endswith("$0.5000 (+1 rows unpriced)")
