"""The Parquet output's answer columns, read from partial-file lines (no pyarrow needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from infermux.jobs.table_out import _answer
from infermux.types import Usage

STORED_USAGE = [
    {"prompt_tokens": 7, "completion_tokens": 8, "total_tokens": 15},
    {"prompt_tokens": 7, "completion_tokens": 8},
    {"prompt_tokens": "7", "completion_tokens": 8.0},
    {"prompt_tokens": True, "completion_tokens": None},
    {"prompt_tokens": 7},
    {"completion_tokens": 3, "extra": "x"},
    {},
    None,
    "7",
    [7, 8],
]


@pytest.mark.parametrize("stored", STORED_USAGE)
def test_token_columns_read_usage_as_usage_does(stored: Any) -> None:
    usage = Usage.from_json_dict(stored)
    expected = (usage.prompt_tokens, usage.completion_tokens) if usage is not None else (None, None)
    conversation = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}],
                    "metadata": {"usage": stored}}  # fmt: skip
    line = (
        json.dumps({"id": "r", "fp": "f", "rq": "d", "conversation": conversation}, separators=(",", ":")).encode()
        + b"\n"
    )
    assert _answer(line, None)[2:4] == expected  # type: ignore[index]


def test_a_partial_line_gives_the_answer_columns_in_order() -> None:
    line = (
        b'{"id":"r","fp":"f","rq":"d","conversation":{"conversation_id":null,"messages":['
        b'{"role":"user","content":"hi"},{"role":"assistant","content":"echo: hi"}],'
        b'"metadata":{"finish_reason":"MAX_TOKENS","usage":{"prompt_tokens":2,"completion_tokens":3},'
        b'"cost_usd":1}}}\n'
    )
    assert _answer(line, None) == ("echo: hi", "length", 2, 3, 1.0, None)
    assert _answer(None, '{"kind":"x"}') == (None, None, None, None, None, '{"kind":"x"}')
    assert _answer(None, None) is None


def test_every_assembled_output_is_flushed_to_disk_before_it_takes_its_place(tmp_path: Path) -> None:
    """``fsync_path`` syncs a file, and a folder's files then the folder (a dataset output), by real fsyncs."""
    import os

    from infermux.jobs.files import fsync_path

    folder = tmp_path / "out.dataset"
    (folder / "data").mkdir(parents=True)
    for name in ("data/a.arrow", "data/b.arrow", "state.json"):
        (folder / name).write_bytes(b"x")
    synced: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        synced.append(fd)
        real(fd)

    os.fsync = counting  # type: ignore[assignment]
    try:
        fsync_path(folder / "state.json")
        assert len(synced) == 1
        fsync_path(folder)
    finally:
        os.fsync = real
    assert len(synced) == 1 + 3 + 1  # the file; then the folder's three files and the folder itself
