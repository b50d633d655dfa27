"""Fireworks batch inference jobs (datasets in and out; submit, status, fetch, list; `infermux batch run`,
killed and rerun) against its protocol fake."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infermux.configs import GenerationParams, ModelParams, RemoteParams
from infermux.engines.registry import engine_class
from infermux.errors import ConfigError
from infermux.jobs import provider_batch
from infermux.jobs.rows import iter_rows
from tests.conftest import ROOT, cli_env, run_cli
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


def write_rows(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"question {i}"}]}) + "\n"
                            for i in range(n)))  # fmt: skip
    return path


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


def test_the_account_id_is_required(fake: FakeFireworksBatch, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FIREWORKS_ACCOUNT_ID")
    with pytest.raises(ConfigError, match="FIREWORKS_ACCOUNT_ID"):
        make(fake).batch_client()


def _config(tmp_path: Path, fake: FakeFireworksBatch) -> Path:
    config = tmp_path / "fireworks.yaml"
    config.write_text(json.dumps({
        "model": {"model_name": MODEL}, "engine": "FIREWORKS", "generation": {"max_new_tokens": 16},
        "remote_params": {"api_url": fake.url + "/inference/v1", "api_key": KEY, "retry_backoff_base": 0.01},
    }))  # fmt: skip
    return config


def _answers(out: Path) -> list[str]:
    return [json.loads(line)["messages"][0]["content"] for line in out.read_text().splitlines()]


def _args(tmp_path: Path, fake: FakeFireworksBatch, rows: Path, out: Path) -> list[str]:
    return ["batch", "run", "-c", str(_config(tmp_path, fake)), "--input_path", str(rows), "--output_path", str(out),
            "--poll-interval", "0.01"]  # fmt: skip


def test_batch_run_50_rows_with_a_failed_and_an_expired_row(fake: FakeFireworksBatch, tmp_path: Path) -> None:
    rows, out = write_rows(tmp_path / "in.jsonl", 50), tmp_path / "out.jsonl"
    ids = [r.row_id for r in iter_rows(str(rows))]
    fake.fail_custom_ids, fake.expire_custom_ids = {ids[7]}, {ids[31]}
    args = _args(tmp_path, fake, rows, out)
    env = cli_env(FIREWORKS_ACCOUNT_ID=ACCOUNT)
    first = run_cli(*args, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "batch: 48 rows answered, 2 not" in first.stdout and "online: 2 rows answered, 0 failed" in first.stdout
    [job] = fake.jobs.values()
    assert job["state"] == "JOB_STATE_EXPIRED"
    online = [r.json["messages"][0]["content"] for r in fake.requests if r.path.endswith("/chat/completions")]
    assert sorted(online) == ["question 31", "question 7"]  # each answered online once
    assert _answers(out) == [f"question {i}" for i in range(50)]
    before = len(fake.requests)
    again = run_cli(*args, env=env)  # rerun: nothing submitted or answered twice
    assert again.returncode == 0, again.stdout + again.stderr
    assert [r.path for r in fake.requests[before:] if r.method == "POST"] == []
    assert _answers(out) == [f"question {i}" for i in range(50)]


STAGES = {
    "uploading": ("POST", r"/v1/accounts/[^/]+/datasets/[^/]+:upload", False),
    "creating (created, reply lost)": ("POST", r"/v1/accounts/[^/]+/batchInferenceJobs", True),
    "waiting": ("GET", r"/v1/accounts/[^/]+/batchInferenceJobs/[^/]+", False),
    "fetching": ("GET", r"/v1/accounts/[^/]+/datasets/[^/]+:getDownloadEndpoint", False),
    "answering online": ("POST", r"/inference/v1/chat/completions", False),
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_batch_run_killed_during_a_stage_then_rerun(fake: FakeFireworksBatch, tmp_path: Path, stage: str) -> None:
    rows, out = write_rows(tmp_path / "in.jsonl", 50), tmp_path / "out.jsonl"
    ids = [r.row_id for r in iter_rows(str(rows))]
    fake.fail_custom_ids, fake.expire_custom_ids = {ids[3]}, {ids[40]}
    args = _args(tmp_path, fake, rows, out)
    env = cli_env(FIREWORKS_ACCOUNT_ID=ACCOUNT)
    method, pattern, after = STAGES[stage]
    fake.hold(method, pattern, after=after)
    proc = subprocess.Popen([sys.executable, "-m", "infermux", *args], env=env, cwd=str(ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        assert fake.reached.wait(90), f"the job never reached {stage}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        fake.release()
    again = run_cli(*args, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(fake.jobs) == 1 and posts(fake, "/datasets") == 1  # no job or dataset created twice
    assert _answers(out) == [f"question {i}" for i in range(50)]  # every row once, in input order
    online = sorted(r.json["messages"][0]["content"] for r in fake.requests if r.path.endswith("/chat/completions"))
    assert set(online) == {"question 3", "question 40"}
    # only answers lost in the kill (both rows may have been in flight) are asked again
    assert len(online) in ((3, 4) if stage == "answering online" else (2,))
