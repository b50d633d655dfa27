"""The finished-job index (``<output>.done``) is written with memory flat in the job's number of rows."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from infermux.jobs.files import JobFiles
from infermux.jobs.finished import IndexWriter, index_entries


def test_the_index_keeps_no_row_in_memory_and_reads_back(tmp_path: Path) -> None:
    files = JobFiles(tmp_path / "out.jsonl", "fp")
    files.index.parent.mkdir(parents=True, exist_ok=True)
    files.output.write_text("{}\n")
    writer = IndexWriter(files)
    rows = 100_000
    tracemalloc.start()
    try:
        for i in range(rows):
            writer.add(f"row-{i:06d}", f"{i:016x}")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A list of (id, digest) tuples for 100,000 rows takes ~20 MB; a scratch file's buffer a few KB.
    assert peak < 2_000_000, peak
    writer.finish(rows)
    entries = index_entries(files)
    assert entries is not None and len(entries) == rows and entries["row-000042"] == f"{42:016x}"
    assert sorted(p.name for p in files.index.parent.iterdir() if p.name.endswith(".rows")) == []
