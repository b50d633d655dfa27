"""A job's per-row state stays small: resume (reading the partial file back, compacting it) and assembling
the output in input order keep 8-24 bytes per row, not dicts and sets of row ids."""

from __future__ import annotations

import json
import random
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from infermux.jobs.files import JobFiles
from infermux.jobs.finished import index_entries
from infermux.jobs.options import request_digest
from infermux.jobs.rows import InputRow, RowIds, row_id_for, unique_id
from infermux.types import Conversation, Message, Role

ROWS = 100_000


def _conversation(i: int) -> Conversation:
    return Conversation(messages=[Message(role=Role.USER, content=f"q{i}")])


def _rows() -> Iterator[InputRow]:
    for i in range(ROWS):
        yield InputRow(index=i, line=i + 1, row_id=f"row-{i}-{i:012x}", conversation=_conversation(i))


def _write_partial(files: JobFiles, order: list[int]) -> None:
    """The partial file of a job killed after answering the rows of ``order`` (in that order), with a
    repeated line, a line of another config and a torn last line."""
    head = '{{"id":"row-{0}-{0:012x}","fp":"{1}","rq":"{2}","conversation":'
    answer = '{{"messages":[{{"role":"user","content":"q{0}"}},{{"role":"assistant","content":"a{0}"}}]}}}}\n'
    with files.partial.open("w") as out:
        for n, i in enumerate(order):
            digest = request_digest(_conversation(i))
            out.write(head.format(i, files.fingerprint, digest) + answer.format(i))
            if n == 10:
                out.write(head.format(i, files.fingerprint, digest) + answer.format(-1))  # repeated: first wins
                out.write(head.format(ROWS + 1, "other", digest) + answer.format(ROWS + 1))  # another config
        out.write(head.format(order[0], files.fingerprint, "x")[:30])  # torn


def test_resume_and_assembly_keep_a_few_bytes_per_row(tmp_path: Path) -> None:
    files = JobFiles(tmp_path / "out.jsonl", "fp")
    order = [i for i in range(ROWS) if i % 10]  # every tenth row not answered yet
    random.Random(1).shuffle(order)  # rows finish in any order
    _write_partial(files, order)
    ids = [row.row_id for row in _rows()]
    tracemalloc.start()
    try:
        done = files.load_done(ids, rows=_rows)
        _, resume_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        written = files.assemble(ids, complete=False)
        _, assembly_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The earlier state (a dict of id -> digest and the partial file's lines as a list to resume, a dict of
    # id -> (offset, digest) to assemble) peaked at 49 MB and 36 MB here; positions take 0.8 MB, their
    # lookup by id 4 MB more while the partial file is read back.
    assert resume_peak < 8_000_000, resume_peak
    assert assembly_peak < 4_000_000, assembly_peak
    assert len(done) == written == len(order) and files.stale_rows == 1
    assert 0 not in done and 1 in done
    lines = files.output.read_text().splitlines()
    answered = sorted(order)
    assert [json.loads(line)["messages"][-1]["content"] for line in lines] == [f"a{i}" for i in answered]
    assert sum(1 for _ in files.partial.open()) == len(order)  # compacted: no repeat, torn or stale line


@pytest.mark.parametrize("kill_after", [0, 5])
def test_rows_recorded_in_this_run_go_to_their_input_position(tmp_path: Path, kill_after: int) -> None:
    files = JobFiles(tmp_path / "out.jsonl", "fp")
    rows = [InputRow(index=i, line=i + 1, row_id=f"r{i}", conversation=_conversation(i)) for i in range(20)]
    ids = [row.row_id for row in rows]
    earlier = list(reversed(rows[:kill_after]))
    for batch in (earlier, [row for row in reversed(rows) if row not in earlier]):
        files.load_done(ids, rows=lambda: iter(rows))
        files.open()
        for row in batch:
            reply = Message(role=Role.ASSISTANT, content=row.row_id)
            answered = row.conversation.replace(messages=[*row.conversation.messages, reply])
            files.append_done(row, answered)
        files.close()
    assert files.assemble(ids, complete=True) == 20
    out = [json.loads(line)["messages"][-1]["content"] for line in files.output.read_text().splitlines()]
    assert out == ids
    entries = index_entries(files)
    assert entries is not None and list(entries) == ids and entries["r3"] == request_digest(rows[3].conversation)


def test_row_ids_are_those_of_unique_id_in_a_few_bytes_each() -> None:
    rnd = random.Random(3)
    for _ in range(200):
        seen: dict[str, int] = {}
        ids, expected, derived = RowIds(), [], []
        for i in range(60):
            raw, pick = f"raw{rnd.randrange(5)}".encode(), rnd.random()
            given: str | None = None
            if 0.5 <= pick < 0.7:
                given = rnd.choice(["a", "b", "a#2"])
            elif pick >= 0.7:  # a given id equal to an earlier derived one, or to a later position's
                given = rnd.choice(derived) if derived and pick < 0.95 else row_id_for(i + 1, None, raw)
            expected.append(unique_id(row_id_for(i, given, raw), seen))
            assert ids.add(i, given, raw) == expected[-1]
            if given is None:
                derived.append(row_id_for(i, None, raw))
        assert list(ids) == expected and ids == expected and ids[7] == expected[7]
    tracemalloc.start()
    try:
        ids = RowIds()
        for i in range(ROWS):
            ids.add(i, None, b"%d" % i)
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size < 1_000_000, size  # a list of these ids takes ~8 MB
