"""``infermux convert``: JSONL, Parquet and dataset folders into one another, streamed, written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from infermux.errors import InputError  # noqa: E402
from infermux.jobs.convert import convert  # noqa: E402
from infermux.jobs.rows import iter_rows  # noqa: E402
from tests.conftest import run_cli  # noqa: E402


def _conversations(count: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for i in range(count):
        row: dict[str, Any] = {"conversation_id": f"c{i}", "messages": [{"role": "user", "content": f"q {i}"}]}
        if i % 3 == 1:
            row["messages"].append({"role": "assistant", "content": None, "tool_calls": [
                {"id": f"t{i}", "type": "function", "function": {"name": "f", "arguments": "{}"}}]})  # fmt: skip
            row["messages"].append({"role": "tool", "tool_call_id": f"t{i}", "content": "42"})
        if i >= 12_000:  # a key that appears only after the first piece of 10,000 rows
            row["metadata"] = {"late": i}
        rows.append(row)
    return rows


def test_jsonl_to_parquet_to_dataset_to_jsonl_keeps_every_row(tmp_path: Path) -> None:
    rows = _conversations(12_500)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = convert(str(tmp_path / "in.jsonl"), str(tmp_path / "a.parquet"))
    assert (report.rows, report.input_format, report.output_format) == (12_500, "jsonl", "parquet")
    table = pq.read_table(tmp_path / "a.parquet")
    assert table.num_rows == 12_500 and table.column("metadata").to_pylist()[-1] == {"late": 12_499}
    assert convert(str(tmp_path / "a.parquet"), str(tmp_path / "ds") + "/").output_format == "dataset"
    assert (tmp_path / "ds" / "state.json").is_file()
    convert(str(tmp_path / "ds"), str(tmp_path / "back.jsonl"))
    back = [json.loads(line) for line in (tmp_path / "back.jsonl").read_text().splitlines()]
    assert [b["conversation_id"] for b in back] == [r["conversation_id"] for r in rows]
    assert back[1]["messages"][1]["tool_calls"][0]["function"]["name"] == "f"
    # the table is a job input: the same conversations as the JSONL it came from
    for fmt in ("a.parquet", "ds"):
        got = [(r.row_id, r.conversation.messages) for r in iter_rows(tmp_path / fmt)]
        assert got == [(r.row_id, r.conversation.messages) for r in iter_rows(tmp_path / "in.jsonl")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet", "back.jsonl", "ds", "in.jsonl"]


def test_convert_refuses_what_cannot_be_one_table_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "mixed.jsonl").write_text('{"a": 1}\n{"a": "text"}\n')
    with pytest.raises(InputError, match="lines 1-2 cannot be one table"):
        convert(str(tmp_path / "mixed.jsonl"), str(tmp_path / "out.parquet"))
    (tmp_path / "late.jsonl").write_text('{"a": 1}\n' * 10_000 + '{"a": "text"}\n')  # apart: in two pieces
    with pytest.raises(InputError, match="the lines cannot be one table"):
        convert(str(tmp_path / "late.jsonl"), str(tmp_path / "out.parquet"))
    (tmp_path / "late.jsonl").unlink()
    (tmp_path / "list.jsonl").write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(InputError, match=r"list.jsonl:2: each line must be a JSON object"):
        convert(str(tmp_path / "list.jsonl"), str(tmp_path / "out.parquet"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list.jsonl", "mixed.jsonl"]
    result = run_cli("convert", str(tmp_path / "mixed.jsonl"), str(tmp_path / "out") + "/")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "cannot be one table" in result.stderr


def test_the_cli_turns_a_parquet_output_into_jsonl(tmp_path: Path) -> None:
    table = pa.table({"q": ["x", "y"], "answer": ["echo x", None], "raw": [b"\x00\x01", b""]})
    pq.write_table(table, tmp_path / "answers.parquet")
    result = run_cli("convert", str(tmp_path / "answers.parquet"), str(tmp_path / "answers.jsonl"))
    assert result.returncode == 0, result.stderr
    assert "wrote 2 rows (parquet -> jsonl)" in result.stdout
    lines = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert lines == [{"q": "x", "answer": "echo x", "raw": "AAE="}, {"q": "y", "answer": None, "raw": ""}]
