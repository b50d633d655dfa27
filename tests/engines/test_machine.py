"""The machine report's sections: facts that fail become rows naming the error, never exceptions."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from infermux.engines import machine
from infermux.engines.machine import Section


def test_a_fact_that_raises_is_recorded_as_its_error() -> None:
    section = Section("x")
    section.add("good", lambda: 3)
    section.add("skipped", lambda: None)
    section.add("bad", lambda: Path("/nonexistent/file").read_text())
    assert section.rows[0] == ("good", "3")
    assert [label for label, _ in section.rows] == ["good", "bad"]
    assert section.rows[1][1].startswith("unknown (FileNotFoundError: ")


def test_a_section_that_raises_becomes_one_error_row() -> None:
    def broken_section() -> Section:
        raise ValueError("no such thing\nsecond line")

    assert machine._guarded(broken_section) == Section("broken", [("error", "ValueError: no such thing")])


def test_the_machine_section_reads_this_machine() -> None:
    rows = dict(machine.machine_section().rows)
    assert rows["cores"].startswith(f"{os.cpu_count()} (os.cpu_count)")
    assert rows["python"].startswith(sys.version.split()[0])
    assert not any(value.startswith("unknown") for value in rows.values()), rows


@pytest.mark.parametrize("isolate", [True, False], ids=["child processes", "in process"])
def test_report_without_vllm_has_the_other_sections_in_order(isolate: bool) -> None:
    sections = machine.report(include_vllm=False, isolate=isolate)
    assert [s.title for s in sections] == ["machine", "llama.cpp", "torch"]
    assert all(label != "error" for s in sections for label, _ in s.rows), sections
