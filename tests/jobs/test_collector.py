"""The collector's youngest-generation threshold while jobs run: raised, nested, restored, or left alone."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Iterator

import pytest

from infermux.configs import GenerationParams, ModelParams
from infermux.engines.base import InferenceEngine
from infermux.jobs.collector import JOB_THRESHOLD, fewer_collections
from infermux.jobs.loop import run_chunks
from infermux.jobs.rows import InputRow
from infermux.types import Conversation


@pytest.fixture(autouse=True)
def _default_thresholds(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("INFERMUX_GC_THRESHOLD", raising=False)
    before, enabled = gc.get_threshold(), gc.isenabled()
    gc.set_threshold(700, 10, 10)
    gc.enable()
    yield
    gc.set_threshold(*before)
    if not enabled:
        gc.disable()


def test_a_job_raises_the_youngest_threshold_and_restores_all_three() -> None:
    gc.set_threshold(700, 11, 12)
    with fewer_collections():
        assert gc.get_threshold() == (JOB_THRESHOLD, 11, 12)
    assert gc.get_threshold() == (700, 11, 12)


def test_nested_and_overlapping_jobs_restore_once_the_last_ends() -> None:
    outer = fewer_collections()
    outer.__enter__()
    with fewer_collections():
        assert gc.get_threshold()[0] == JOB_THRESHOLD
    assert gc.get_threshold()[0] == JOB_THRESHOLD  # the outer job still runs
    outer.__exit__(None, None, None)
    assert gc.get_threshold() == (700, 10, 10)


def test_jobs_in_several_threads_share_one_setting() -> None:
    inside, release = threading.Barrier(4), threading.Event()

    def job() -> None:
        with fewer_collections():
            inside.wait()
            release.wait(10)

    threads = [threading.Thread(target=job) for _ in range(3)]
    for t in threads:
        t.start()
    inside.wait()
    assert gc.get_threshold()[0] == JOB_THRESHOLD
    release.set()
    for t in threads:
        t.join()
    assert gc.get_threshold() == (700, 10, 10)


def test_a_program_that_tuned_the_collector_is_left_as_it_is() -> None:
    gc.set_threshold(50_000, 10, 10)
    with fewer_collections():
        assert gc.get_threshold()[0] == 50_000
    gc.set_threshold(700, 10, 10)
    gc.disable()
    with fewer_collections():
        assert gc.get_threshold()[0] == 700 and not gc.isenabled()
    gc.enable()


def test_thresholds_the_program_sets_during_a_job_are_kept() -> None:
    with fewer_collections():
        gc.set_threshold(1234, 5, 5)
    assert gc.get_threshold() == (1234, 5, 5)


@pytest.mark.parametrize(("value", "expected"), [("0", 700), ("3000", 3000), ("many", JOB_THRESHOLD)])
def test_the_environment_sets_another_threshold_or_none(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: int
) -> None:
    monkeypatch.setenv("INFERMUX_GC_THRESHOLD", value)
    with fewer_collections():
        assert gc.get_threshold()[0] == expected
    assert gc.get_threshold()[0] == 700


class _Watching(InferenceEngine):
    """Answers each row with the collector's threshold as it was while the row ran."""

    async def _infer_chunk(self, conversations: list[Conversation], generation: GenerationParams) -> list:  # type: ignore[type-arg]
        await asyncio.sleep(0)
        return [c.with_reply(str(gc.get_threshold()[0])) for c in conversations]


def test_the_job_loop_runs_rows_under_it_and_restores_after_a_failure() -> None:
    engine = _Watching(ModelParams(model_name="watching"))
    rows = [InputRow(i, i + 1, f"r{i}", Conversation.model_validate({"messages": [{"role": "user", "content": "hi"}]}))
            for i in range(3)]  # fmt: skip
    seen: list[str] = []

    def keep(row: InputRow, result: object) -> None:
        assert isinstance(result, Conversation)
        seen.append(result.messages[-1].text)
        if len(seen) == 2:
            raise OSError("disk full")

    async def go() -> None:
        async with engine.session():
            await run_chunks(engine, rows, engine.generation_params, keep)

    with pytest.raises(OSError):
        asyncio.run(go())
    assert seen == [str(JOB_THRESHOLD)] * 2
    assert gc.get_threshold() == (700, 10, 10)
