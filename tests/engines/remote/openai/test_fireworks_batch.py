"""Fireworks batch inference jobs (datasets in and out; submit, status, fetch, list; `infermux batch run`,
killed and rerun) against its protocol fake."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infermux.configs import GenerationParams, ModelParams, RemoteParams
from infermux.engines.registry import engine_class
from infermux.errors import ConfigError
from infermux.jobs import provider_batch
from infermux.jobs.rows import iter_rows
from tests.conftest import cli_env
from tests.engines.remote.batch_runs import kill_then_rerun, run_args, run_to_the_end, write_rows
from tests.fakes import FakeFireworksBatch

KEY = "fw-test"
ACCOUNT = "acct-test"
MODEL = "accounts/fireworks/models/llama-v3p1-8b-instruct"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeFireworksBatch]:
    monkeypatch.setenv("FIREWORKS_ACCOUNT_ID", ACCOUNT)
    with FakeFireworksBatch(api_key=KEY, account=ACCOUNT, fail_status=500) as server:
        assert isinstance(server, FakeFireworksBatch)
        yield server


def make(fake: FakeFireworksBatch) -> Any:
    return engine_class("FIREWORKS")(
        ModelParams(model_name=MODEL),
        generation_params=GenerationParams(max_new_tokens=16),
        remote_params=RemoteParams(api_url=fake.url + "/inference/v1", api_key=KEY, max_retries=1,
                                   retry_backoff_base=0.01),
    )  # fmt: skip


def posts(fake: FakeFireworksBatch, suffix: str) -> int:
    return sum(1 for r in fake.requests if r.method == "POST" and r.path.endswith(suffix))


def test_submit_status_fetch_and_list(fake: FakeFireworksBatch, tmp_path: Path) -> None:
    rows, out = write_rows(tmp_path / "in.jsonl", 4), tmp_path / "out.jsonl"
    eng = make(fake)
    state = eng.submit_batch(str(rows), str(out))
    [shard] = state.shards
    assert shard.status == "JOB_STATE_VALIDATING" and shard.batch_id in fake.jobs
    job = fake.jobs[shard.batch_id]
    assert job["model"] == MODEL and job["inputDatasetId"] == f"accounts/{ACCOUNT}/datasets/{shard.batch_id}-in"
    [data] = fake.datasets[f"{shard.batch_id}-in"].files.values()
    lines = [json.loads(line) for line in data.splitlines()]
    assert [sorted(line) for line in lines] == [["body", "custom_id"]] * 4
    assert [line["custom_id"] for line in lines] == [r.row_id for r in iter_rows(str(rows))]
    eng.submit_batch(str(rows), str(out))  # resumed: nothing created twice
    assert posts(fake, "/batchInferenceJobs") == 1 and posts(fake, ":upload") == 1
    report = eng.fetch_batch(str(rows), str(out))  # one poll: still running
    assert (report.done, report.pending) == (0, 4)
    fake.finish_all()
    report = eng.fetch_batch(str(rows), str(out))
    assert (report.done, report.failed, report.pending) == (4, 0, 0)
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["messages"][0]["content"] for a in answers] == [f"question {i}" for i in range(4)]
    signed = [r for r in fake.requests if r.path.startswith("/signed/")]
    assert signed and all(r.header("Authorization") is None for r in signed)  # the key stays with Fireworks
    assert not eng.batch_client().can_cancel
    eng.submit_batch(str(rows), str(tmp_path / "out2.jsonl"))
    listed = eng.list_batches(limit=1)  # newest first, a page of one
    assert [b["id"] for b in listed] == [provider_batch.status(eng, str(tmp_path / "out2.jsonl")).shards[0].batch_id]
    assert len(eng.list_batches(limit=5)) == 2


def test_a_lost_create_reply_finds_the_job_by_its_id(fake: FakeFireworksBatch, tmp_path: Path) -> None:
    rows, out = write_rows(tmp_path / "in.jsonl", 3), tmp_path / "out.jsonl"
    fake.lose_create_replies = 1  # created, but the client hears 500
    state = make(fake).submit_batch(str(rows), str(out))
    assert len(fake.jobs) == 1 and state.shards[0].batch_id == next(iter(fake.jobs))


def test_the_account_id_is_required(fake: FakeFireworksBatch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FIREWORKS_ACCOUNT_ID")
    eng = make(fake)
    assert eng.batch_client().can_list  # what it offers is known without the account
    with pytest.raises(ConfigError, match="FIREWORKS_ACCOUNT_ID"):
        eng.submit_batch(str(write_rows(tmp_path / "in.jsonl", 2)), str(tmp_path / "out.jsonl"))
    assert not fake.requests


def _config(tmp_path: Path, fake: FakeFireworksBatch) -> Path:
    config = tmp_path / "fireworks.yaml"
    config.write_text(json.dumps({
        "model": {"model_name": MODEL}, "engine": "FIREWORKS", "generation": {"max_new_tokens": 16},
        "remote_params": {"api_url": fake.url + "/inference/v1", "api_key": KEY, "retry_backoff_base": 0.01},
    }))  # fmt: skip
    return config


def test_batch_run_50_rows_with_a_failed_and_an_expired_row(fake: FakeFireworksBatch, tmp_path: Path) -> None:
    rows, out = write_rows(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    ids = [r.row_id for r in iter_rows(str(rows))]
    fake.fail_custom_ids, fake.expire_custom_ids = {ids[7]}, {ids[31]}
    env = cli_env(FIREWORKS_ACCOUNT_ID=ACCOUNT)
    run_to_the_end(fake, run_args(_config(tmp_path, fake), rows, out), env, out, failed=7, expired=31)
    [job] = fake.jobs.values()
    assert job["state"] == "JOB_STATE_EXPIRED"


STAGES = {
    "uploading": ("POST", r"/v1/accounts/[^/]+/datasets/[^/]+:upload", False),
    "creating (created, reply lost)": ("POST", r"/v1/accounts/[^/]+/batchInferenceJobs", True),
    "waiting": ("GET", r"/v1/accounts/[^/]+/batchInferenceJobs/[^/]+", False),
    "fetching": ("GET", r"/v1/accounts/[^/]+/datasets/[^/]+:getDownloadEndpoint", False),
    "answering online": ("POST", r"/inference/v1/chat/completions", False),
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_batch_run_killed_during_a_stage_then_rerun(fake: FakeFireworksBatch, tmp_path: Path, stage: str) -> None:
    rows, out = write_rows(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    ids = [r.row_id for r in iter_rows(str(rows))]
    fake.fail_custom_ids, fake.expire_custom_ids = {ids[3]}, {ids[40]}
    args = run_args(_config(tmp_path, fake), rows, out)
    env = cli_env(FIREWORKS_ACCOUNT_ID=ACCOUNT)
    kill_then_rerun(fake, args, env, out, STAGES[stage], rerun_online=stage == "answering online")
    assert len(fake.jobs) == 1 and posts(fake, "/datasets") == 1  # no job or dataset created twice
