"""The Gemini API's Batch Mode (inline and file input; submit, status, fetch, cancel, list; `infermux batch
run`, killed and rerun) against its protocol fake."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infermux.configs import GenerationParams, ModelParams, RemoteParams
from infermux.engines.remote.gemini.batches import GeminiBatchClient
from infermux.engines.remote.gemini.engine import GoogleGeminiInferenceEngine
from infermux.jobs.batch_state import BatchJobState
from infermux.jobs.rows import iter_rows
from tests.conftest import cli_env
from tests.engines.remote.batch_runs import kill_then_rerun, run_args, run_to_the_end, write_rows
from tests.fakes import FakeGeminiBatches

KEY = "gemini-batch-key"
MODEL = "gemini-2.5-flash"


@pytest.fixture
def fake() -> Iterator[FakeGeminiBatches]:
    with FakeGeminiBatches(api_key=KEY) as server:
        assert isinstance(server, FakeGeminiBatches)
        yield server


def make(fake: FakeGeminiBatches) -> Any:
    return GoogleGeminiInferenceEngine(
        ModelParams(model_name=MODEL),
        generation_params=GenerationParams(max_new_tokens=16),
        remote_params=RemoteParams(api_url=fake.url + "/v1beta", api_key=KEY, max_retries=1, retry_backoff_base=0.01),
    )


def creations(fake: FakeGeminiBatches) -> int:
    return sum(1 for r in fake.requests if r.method == "POST" and r.path.endswith(":batchGenerateContent"))


@pytest.mark.parametrize("form", ["inline", "file"])
def test_submit_status_fetch_cancel_and_list(
    fake: FakeGeminiBatches, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    if form == "file":
        monkeypatch.setattr(GeminiBatchClient, "inline_bytes", 10)  # any batch is too large to go inline
    rows, out = write_rows(tmp_path / "in.jsonl", 4), tmp_path / "out.jsonl"
    eng = make(fake)
    state = eng.submit_batch(str(rows), str(out))
    [shard] = state.shards
    assert shard.status == "BATCH_STATE_PENDING" and shard.batch_id in fake.batches
    create = next(r for r in fake.requests if r.path.endswith(":batchGenerateContent"))
    source = create.json["batch"]["inputConfig"]
    keys = [r.row_id for r in iter_rows(str(rows))]
    if form == "inline":
        assert [i["metadata"]["key"] for i in source["requests"]["requests"]] == keys
        assert not fake.files
    else:
        lines = [json.loads(line) for line in fake.files[source["fileName"]].splitlines()]
        assert [line["key"] for line in lines] == keys and all("contents" in line["request"] for line in lines)
    eng.submit_batch(str(rows), str(out))  # resumed: nothing created twice
    assert creations(fake) == 1
    report = eng.fetch_batch(str(rows), str(out))  # one poll: still running
    assert (report.done, report.pending) == (0, 4)
    report = eng.fetch_batch(str(rows), str(out))
    assert (report.done, report.failed, report.pending) == (4, 0, 0)
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["messages"][0]["content"] for a in answers] == [f"question {i}" for i in range(4)]
    out2 = tmp_path / "out2.jsonl"
    eng.submit_batch(str(rows), str(out2))
    assert eng.cancel_batch(str(out2)).shards[0].status == "BATCH_STATE_CANCELLED"
    report = eng.fetch_batch(str(rows), str(out2))
    assert (report.done, report.failed, report.settled) == (0, 4, {})
    errors = [json.loads(line) for line in Path(f"{out2}.errors.jsonl").read_text().splitlines()]
    assert {e["kind"] for e in errors} == {"batch_cancelled"}
    listed = eng.list_batches(limit=1)  # most recent first, a page of one
    assert [b["id"] for b in listed] == [BatchJobState.require(out2).shards[0].batch_id]
    assert len(eng.list_batches(limit=5)) == 2


def test_a_lost_create_reply_finds_the_batch_by_its_display_name(fake: FakeGeminiBatches, tmp_path: Path) -> None:
    rows, out = write_rows(tmp_path / "in.jsonl", 3), tmp_path / "out.jsonl"
    fake.lose_create_replies = 1  # created, but the client hears 503
    state = make(fake).submit_batch(str(rows), str(out))
    assert len(fake.batches) == 1 and state.shards[0].batch_id == next(iter(fake.batches))


def _config(tmp_path: Path, fake: FakeGeminiBatches) -> Path:
    config = tmp_path / "gemini.yaml"
    config.write_text(json.dumps({
        "model": {"model_name": MODEL}, "engine": "GOOGLE_GEMINI", "generation": {"max_new_tokens": 16},
        "remote_params": {"api_url": fake.url + "/v1beta", "api_key": KEY, "retry_backoff_base": 0.01},
    }))  # fmt: skip
    return config


def test_batch_run_50_rows_with_a_failed_and_an_expired_row(fake: FakeGeminiBatches, tmp_path: Path) -> None:
    rows, out = write_rows(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    ids = [r.row_id for r in iter_rows(str(rows))]
    fake.fail_custom_ids, fake.expire_custom_ids = {ids[7]}, {ids[31]}
    run_to_the_end(fake, run_args(_config(tmp_path, fake), rows, out), cli_env(), out, failed=7, expired=31)
    [operation] = fake.batches.values()
    assert operation["metadata"]["state"] == "BATCH_STATE_EXPIRED"


STAGES = {
    "creating (created, reply lost)": ("POST", r"/v1beta/models/[^/]+:batchGenerateContent", True),
    "waiting": ("GET", r"/v1beta/batches/[^/]+", False),
    "answering online": ("POST", r"/v1beta/models/[^/]+:generateContent", False),
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_batch_run_killed_during_a_stage_then_rerun(fake: FakeGeminiBatches, tmp_path: Path, stage: str) -> None:
    rows, out = write_rows(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    ids = [r.row_id for r in iter_rows(str(rows))]
    fake.fail_custom_ids, fake.expire_custom_ids = {ids[3]}, {ids[40]}
    args = run_args(_config(tmp_path, fake), rows, out)
    kill_then_rerun(fake, args, cli_env(), out, STAGES[stage], rerun_online=stage == "answering online")
    assert len(fake.batches) == 1  # never created twice
