"""The driver's single writer and its progress line, without a cluster."""

from __future__ import annotations

import json
from pathlib import Path

from infermux.distributed.driver import ClusterReport, _Writer
from infermux.distributed.progress import describe
from infermux.errors import RowError
from infermux.jobs.files import JobFiles
from infermux.jobs.rows import InputRow
from infermux.types import Conversation, Message, Role


def _row(i: int) -> InputRow:
    conv = Conversation(messages=[Message(role=Role.USER, content=f"row {i}")])
    return InputRow(index=i, line=i + 1, row_id=f"r{i}", conversation=conv)


def test_a_row_answered_twice_is_written_once(tmp_path: Path) -> None:
    files = JobFiles(tmp_path / "out.jsonl", "fp")
    report = ClusterReport(total=3)
    writer = _Writer(files, report, written=bytearray([1, 0, 0]))  # r0 was done by an earlier run
    files.open()
    try:
        answer = _row(1).conversation.with_reply("hi", {"usage": {"prompt_tokens": 2, "completion_tokens": 3}})
        writer.record(0, _row(0), answer)  # already in the partial file: dropped
        writer.record(0, _row(1), answer)
        writer.record(1, _row(1), answer)  # a resent batch answered again: dropped
        writer.record(1, _row(2), RowError(kind="http_error", message="boom", status=500))
    finally:
        files.close()
    assert [json.loads(line)["id"] for line in files.partial.read_text().splitlines()] == ["r1"]
    errors = [json.loads(line) for line in files.errors.read_text().splitlines()]
    assert [(e["id"], e["kind"], e["index"], e["line"]) for e in errors] == [("r2", "http_error", 2, 3)]
    assert (report.done, report.failed, report.duplicates_dropped) == (1, 1, 2)
    assert report.per_replica == {0: 1, 1: 1} and report.completion_tokens == 3


def test_progress_line_shows_rate_eta_failures_tokens_and_replicas() -> None:
    report = ClusterReport(total=100, resumed=10, done=40, failed=2, prompt_tokens=5, completion_tokens=7)
    report.per_replica = {0: 20, 1: 22}
    line = describe(report)
    assert line.startswith("52/100 rows, ") and "rows/s" in line and "ETA " in line
    assert "failed 2" in line and "tokens 5+7" in line and "per replica [20 22]" in line
