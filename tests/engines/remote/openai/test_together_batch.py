"""Together AI's Batch API (submit, status, fetch, cancel, list; `infermux batch run`, killed and rerun)
against its protocol fake."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from infermux.configs import GenerationParams, ModelParams, RemoteParams
from infermux.engines.registry import engine_class
from infermux.jobs.batch_state import BatchJobState
from infermux.jobs.rows import iter_rows
from tests.conftest import cli_env
from tests.engines.remote.batch_runs import kill_then_rerun, run_args, run_to_the_end, write_rows
from tests.fakes import FakeTogetherBatch

KEY = "tg-test"
MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"


@pytest.fixture
def fake() -> Iterator[FakeTogetherBatch]:
    with FakeTogetherBatch(api_key=KEY, fail_status=500) as server:
        assert isinstance(server, FakeTogetherBatch)
        yield server


def make(fake: FakeTogetherBatch) -> object:
    return engine_class("TOGETHER")(
        ModelParams(model_name=MODEL),
        generation_params=GenerationParams(max_new_tokens=16),
        remote_params=RemoteParams(api_url=fake.url + "/v1", api_key=KEY, max_retries=1, retry_backoff_base=0.01),
    )


def count(fake: FakeTogetherBatch, method: str, path: str) -> int:
    return sum(1 for r in fake.requests if r.method == method and r.path == path)


def test_submit_status_fetch_cancel_and_list(fake: FakeTogetherBatch, tmp_path: Path) -> None:
    rows, out = write_rows(tmp_path / "in.jsonl", 4), tmp_path / "out.jsonl"
    eng: object = make(fake)
    state = eng.submit_batch(str(rows), str(out))  # type: ignore[attr-defined]
    [shard] = state.shards
    assert shard.status == "VALIDATING" and shard.input_file_id
    upload = next(r for r in fake.requests if r.path == "/v1/files")
    assert b'name="purpose"\r\n\r\nbatch-api\r\n' in upload.body
    create = next(r for r in fake.requests if r.path == "/v1/batches" and r.method == "POST")
    assert create.json == {"input_file_id": shard.input_file_id, "endpoint": "/v1/chat/completions",
                           "completion_window": "24h", "model_id": MODEL}  # fmt: skip
    lines = [json.loads(line) for line in fake.files[str(shard.input_file_id)].data.splitlines()]
    assert [sorted(line) for line in lines] == [["body", "custom_id"]] * 4
    assert [line["custom_id"] for line in lines] == [r.row_id for r in iter_rows(str(rows))]
    eng.submit_batch(str(rows), str(out))  # type: ignore[attr-defined]  # resumed: nothing created twice
    assert count(fake, "POST", "/v1/batches") == 1 and count(fake, "POST", "/v1/files") == 1
    assert eng.batch_status(str(out)).shards[0].status == "IN_PROGRESS"  # type: ignore[attr-defined]
    report = eng.fetch_batch(str(rows), str(out))  # type: ignore[attr-defined]
    assert (report.done, report.failed, report.pending) == (4, 0, 0)
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["messages"][0]["content"] for a in answers] == [f"question {i}" for i in range(4)]
    # cancel a second job: its rows fail as canceled, worth answering online
    out2 = tmp_path / "out2.jsonl"
    eng.submit_batch(str(rows), str(out2))  # type: ignore[attr-defined]
    assert eng.cancel_batch(str(out2)).shards[0].status == "CANCELLED"  # type: ignore[attr-defined]
    report = eng.fetch_batch(str(rows), str(out2))  # type: ignore[attr-defined]
    assert (report.done, report.failed, report.settled) == (0, 4, {})
    errors = [json.loads(line) for line in Path(f"{out2}.errors.jsonl").read_text().splitlines()]
    assert {e["kind"] for e in errors} == {"batch_cancelled"}
    listed = eng.list_batches(limit=1)  # type: ignore[attr-defined]
    assert [b["id"] for b in listed] == [BatchJobState.require(out2).shards[0].batch_id]
    assert len(eng.list_batches(limit=5)) == 2  # type: ignore[attr-defined]


def test_a_lost_create_reply_finds_the_batch_by_its_input_file(fake: FakeTogetherBatch, tmp_path: Path) -> None:
    rows, out = write_rows(tmp_path / "in.jsonl", 3), tmp_path / "out.jsonl"
    fake.lose_create_replies = 1  # created, but the client hears 502
    state = make(fake).submit_batch(str(rows), str(out))  # type: ignore[attr-defined]
    assert len(fake.batches) == 1 and state.shards[0].batch_id == next(iter(fake.batches))


def test_long_row_ids_become_custom_ids_within_64_characters(fake: FakeTogetherBatch, tmp_path: Path) -> None:
    rows, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows.write_text("".join(json.dumps({"conversation_id": f"{'x' * 70}-{i}", "messages": [
        {"role": "user", "content": f"q{i}"}]}) + "\n" for i in range(2)))  # fmt: skip
    eng: object = make(fake)
    eng.submit_batch(str(rows), str(out))  # type: ignore[attr-defined]
    fake.finish_all()
    report = eng.fetch_batch(str(rows), str(out))  # type: ignore[attr-defined]
    assert (report.done, report.failed) == (2, 0), Path(f"{out}.errors.jsonl").read_text()


def _config(tmp_path: Path, fake: FakeTogetherBatch) -> Path:
    config = tmp_path / "together.yaml"
    config.write_text(json.dumps({
        "model": {"model_name": MODEL}, "engine": "TOGETHER", "generation": {"max_new_tokens": 16},
        "remote_params": {"api_url": fake.url + "/v1", "api_key": KEY, "retry_backoff_base": 0.01},
    }))  # fmt: skip
    return config


def test_batch_run_50_rows_with_a_failed_and_an_expired_row(fake: FakeTogetherBatch, tmp_path: Path) -> None:
    rows, out = write_rows(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    ids = [r.row_id for r in iter_rows(str(rows))]
    fake.fail_custom_ids, fake.expire_custom_ids = {ids[7]}, {ids[31]}
    run_to_the_end(fake, run_args(_config(tmp_path, fake), rows, out), cli_env(), out, failed=7, expired=31)
    [batch] = fake.batches.values()
    assert batch.obj["status"] == "EXPIRED"


STAGES = {
    "uploading": ("POST", r"/v1/files", False),
    "creating (created, reply lost)": ("POST", r"/v1/batches", True),
    "waiting": ("GET", r"/v1/batches/[^/]+", False),
    "fetching": ("GET", r"/v1/files/[^/]+/content", False),
    "answering online": ("POST", r"/v1/chat/completions", False),
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_batch_run_killed_during_a_stage_then_rerun(fake: FakeTogetherBatch, tmp_path: Path, stage: str) -> None:
    rows, out = write_rows(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    ids = [r.row_id for r in iter_rows(str(rows))]
    fake.fail_custom_ids, fake.expire_custom_ids = {ids[3]}, {ids[40]}
    args = run_args(_config(tmp_path, fake), rows, out)
    kill_then_rerun(fake, args, cli_env(), out, STAGES[stage], rerun_online=stage == "answering online")
    inputs = [f for f in fake.files.values() if f.filename.startswith("infermux-")]
    # a batch is never created twice, nor a recorded upload repeated (the killed upload lands as an orphan)
    assert len(inputs) == (2 if stage == "uploading" else 1) and len(fake.batches) == 1
