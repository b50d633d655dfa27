"""BEDROCK model invocation jobs (submit, status, fetch, cancel, list; `infermux batch run`, killed and rerun)
against the Bedrock fake, records in moto's S3 server on 127.0.0.1, through boto3 as a user would."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("boto3")
pytest.importorskip("moto", reason="needs moto[server] (the dev extra)")

from infermux.configs import GenerationParams, ModelParams, RemoteParams
from infermux.engines.remote.bedrock.engine import BedrockInferenceEngine
from infermux.errors import ConfigError
from infermux.jobs.batch_state import BatchJobState
from infermux.jobs.rows import iter_rows
from tests.conftest import cli_env, run_cli
from tests.engines.remote.batch_runs import ROWS, answers, kill_then_rerun, online, run_args, run_to_the_end, write_rows
from tests.fakes import FakeBedrockBatches
from tests.servers import S3Server, s3_server

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
ROLE = "arn:aws:iam::123456789012:role/infermux-batch"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server("bedrock-jobs") as server:
        yield server


@pytest.fixture
def fake(s3: S3Server) -> Iterator[FakeBedrockBatches]:
    with FakeBedrockBatches(s3.client(), s3.access_key) as server:
        assert isinstance(server, FakeBedrockBatches)
        server.min_records = 2  # as an account whose quota was lowered (BEDROCK_BATCH_MIN_RECORDS below)
        yield server


@pytest.fixture
def env(s3: S3Server, fake: FakeBedrockBatches, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    values = s3.env(
        AWS_ENDPOINT_URL_BEDROCK=fake.url, AWS_ENDPOINT_URL_BEDROCK_RUNTIME=fake.url,
        BEDROCK_BATCH_S3_URI=f"s3://{s3.bucket}/{tmp_path.name}", BEDROCK_BATCH_ROLE_ARN=ROLE,
        BEDROCK_BATCH_MIN_RECORDS="2",
    )  # fmt: skip
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


def make() -> Any:
    return BedrockInferenceEngine(
        ModelParams(model_name=MODEL), generation_params=GenerationParams(max_new_tokens=16),
        remote_params=RemoteParams(max_retries=1),
    )  # fmt: skip


def record_id(row_id: str) -> str:
    return "r" + hashlib.sha256(row_id.encode()).hexdigest()[:40]


def test_submit_status_fetch_cancel_and_list(
    fake: FakeBedrockBatches, s3: S3Server, env: dict[str, str], tmp_path: Path
) -> None:
    rows, out = write_rows(tmp_path / "in.jsonl", 4), tmp_path / "out.jsonl"
    eng = make()
    state = eng.submit_batch(str(rows), str(out))
    [shard] = state.shards
    [job] = fake.jobs.values()
    assert shard.batch_id == job["jobArn"] and shard.status == "Validating"  # created, then read once
    assert (job["modelId"], job["modelInvocationType"], job["roleArn"]) == (MODEL, "Converse", ROLE)
    key = job["inputDataConfig"]["s3InputDataConfig"]["s3Uri"].split("/", 3)[3]
    records = [json.loads(line) for line in (s3.get(key) or b"").splitlines()]
    ids = [r.row_id for r in iter_rows(str(rows))]
    assert [r["recordId"] for r in records] == [record_id(i) for i in ids]
    assert records[0]["modelInput"]["messages"] == [{"role": "user", "content": [{"text": "question 0"}]}]
    assert "modelId" not in records[0]["modelInput"] and records[0]["modelInput"]["inferenceConfig"]["maxTokens"] == 16
    eng.submit_batch(str(rows), str(out))  # resumed: nothing created twice
    assert len(fake.jobs) == 1
    report = eng.fetch_batch(str(rows), str(out))  # one poll: scheduled
    assert (report.done, report.pending) == (0, 4)
    fake.finish_all()
    report = eng.fetch_batch(str(rows), str(out))
    assert (report.done, report.failed, report.pending) == (4, 0, 0)
    assert BatchJobState.require(out).shards[0].request_counts == {"total": 4, "completed": 4, "failed": 0}
    assert answers(out) == [f"question {i}" for i in range(4)]
    done = [json.loads(line) for line in out.read_text().splitlines()]
    assert done[2]["messages"][-1]["content"] == "answer to question 2"
    assert done[2]["metadata"]["usage"]["completion_tokens"] == 4
    out2 = tmp_path / "out2.jsonl"
    eng.submit_batch(str(rows), str(out2))
    assert eng.cancel_batch(str(out2)).shards[0].status == "Stopped"  # Stopping, then polled
    report = eng.fetch_batch(str(rows), str(out2))
    assert (report.done, report.failed, report.settled) == (0, 4, {})
    errors = [json.loads(line) for line in Path(f"{out2}.errors.jsonl").read_text().splitlines()]
    assert {e["kind"] for e in errors} == {"batch_cancelled"}
    listed = eng.list_batches(limit=1)  # newest first
    assert [b["id"] for b in listed] == [BatchJobState.require(out2).shards[0].batch_id]
    assert len(eng.list_batches(limit=5)) == 2


def test_error_records_and_an_invalid_request(fake: FakeBedrockBatches, env: dict[str, str], tmp_path: Path) -> None:
    rows, out = write_rows(tmp_path / "in.jsonl", 3), tmp_path / "out.jsonl"
    ids = [r.row_id for r in iter_rows(str(rows))]
    fake.fail_records = {record_id(ids[0])}
    eng = make()
    eng.submit_batch(str(rows), str(out))
    fake.finish_all()
    report = eng.fetch_batch(str(rows), str(out))
    assert (report.done, report.failed, report.settled) == (2, 1, {})  # a 503 is worth answering online
    assert next(iter(fake.jobs.values()))["status"] == "PartiallyCompleted"
    [error] = [json.loads(line) for line in Path(f"{out}.errors.jsonl").read_text().splitlines()]
    assert error["kind"] == "batch_error" and error["message"].startswith("503: ")


def test_fewer_rows_than_the_minimum_are_not_sent_but_answered_online(
    fake: FakeBedrockBatches, env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BEDROCK_BATCH_MIN_RECORDS")  # Bedrock's default quota: 100 records
    fake.min_records = 100
    rows, out = write_rows(tmp_path / "in.jsonl", 5), tmp_path / "out.jsonl"
    eng = make()
    state = eng.submit_batch(str(rows), str(out))
    assert not fake.jobs and state.shards[0].status == "not sent" and "fewer than the 100" in state.shards[0].errors[0]
    report = eng.fetch_batch(str(rows), str(out))
    assert (report.done, report.failed, report.settled) == (0, 5, {})  # all worth answering online


def test_the_fake_refuses_a_job_under_its_minimum(
    fake: FakeBedrockBatches, env: dict[str, str], tmp_path: Path
) -> None:
    fake.min_records = 3  # the account's quota is stricter than BEDROCK_BATCH_MIN_RECORDS says
    rows, out = write_rows(tmp_path / "in.jsonl", 2), tmp_path / "out.jsonl"
    eng = make()
    eng.submit_batch(str(rows), str(out))
    fake.finish_all()
    report = eng.fetch_batch(str(rows), str(out))
    assert (report.done, report.failed) == (0, 2)
    shard = BatchJobState.require(out).shards[0]
    assert shard.status == "Failed" and "fewer than the minimum of 3" in shard.errors[0]


def test_batches_are_cut_within_the_record_limit_and_the_fake_enforces_its_maximum(
    fake: FakeBedrockBatches, env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infermux.engines.remote.bedrock import batches

    monkeypatch.setattr(batches, "MAX_RECORDS", 3)
    rows, out = write_rows(tmp_path / "in.jsonl", 5), tmp_path / "out.jsonl"
    eng = make()
    state = eng.submit_batch(str(rows), str(out))
    assert [s.requests for s in state.shards] == [3, 2] and len(fake.jobs) == 2
    fake.max_records = 2  # the account allows fewer than infermux was told
    fake.finish_all()
    report = eng.fetch_batch(str(rows), str(out))
    assert (report.done, report.failed, report.settled) == (2, 3, {})
    first, second = BatchJobState.require(out).shards
    assert (first.status, second.status) == ("Failed", "Completed")
    assert "more than the maximum of 2" in first.errors[0]


def test_n_above_one_is_refused_per_row(fake: FakeBedrockBatches, env: dict[str, str], tmp_path: Path) -> None:
    rows, out = write_rows(tmp_path / "in.jsonl", 3), tmp_path / "out.jsonl"
    eng = BedrockInferenceEngine(ModelParams(model_name=MODEL), generation_params=GenerationParams(n=2))
    state = eng.submit_batch(str(rows), str(out))
    assert not fake.jobs and not state.shards and len(state.build_errors) == 3
    report = eng.fetch_batch(str(rows), str(out))
    assert report.failed == 3 and "n > 1" in Path(f"{out}.errors.jsonl").read_text()


def test_missing_settings_are_clear_errors(
    fake: FakeBedrockBatches, env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = write_rows(tmp_path / "in.jsonl", 2)
    monkeypatch.delenv("BEDROCK_BATCH_ROLE_ARN")
    with pytest.raises(ConfigError, match="BEDROCK_BATCH_ROLE_ARN"):
        make().submit_batch(str(rows), str(tmp_path / "out.jsonl"))
    monkeypatch.delenv("BEDROCK_BATCH_S3_URI")
    with pytest.raises(ConfigError, match="BEDROCK_BATCH_S3_URI"):
        make().submit_batch(str(rows), str(tmp_path / "out.jsonl"))
    monkeypatch.setenv("BEDROCK_BATCH_MIN_RECORDS", "lots")
    with pytest.raises(ConfigError, match="whole number"):
        make().submit_batch(str(rows), str(tmp_path / "out.jsonl"))
    assert not fake.requests


# ---------------------------------------------------------------------------------------- the CLI


@pytest.fixture
def cli(env: dict[str, str], tmp_path: Path) -> tuple[Path, dict[str, str]]:
    config = tmp_path / "bedrock.yaml"
    config.write_text(json.dumps({"model": {"model_name": MODEL}, "engine": "BEDROCK",
                                  "generation": {"max_new_tokens": 16}}))  # fmt: skip
    return config, cli_env(**env)


def test_batch_run_50_rows_with_a_failed_and_an_expired_row(
    fake: FakeBedrockBatches, cli: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    config, environ = cli
    rows, out = write_rows(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    ids = [r.row_id for r in iter_rows(str(rows))]
    fake.fail_records, fake.expire_records = {record_id(ids[7])}, {record_id(ids[31])}
    run_to_the_end(fake, run_args(config, rows, out), environ, out, failed=7, expired=31)
    [job] = fake.jobs.values()
    assert job["status"] == "Expired"


def test_batch_run_under_the_default_minimum_answers_online(
    fake: FakeBedrockBatches, cli: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    config, environ = cli
    environ.pop("BEDROCK_BATCH_MIN_RECORDS")
    rows, out = write_rows(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    done = run_cli(*run_args(config, rows, out), env=environ)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not fake.jobs and online(fake) == sorted(f"question {i}" for i in range(ROWS))
    assert answers(out) == [f"question {i}" for i in range(ROWS)]


def test_dry_run_shows_the_batch_price_beside_the_online_price(
    fake: FakeBedrockBatches, cli: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    config, environ = cli
    rows = write_rows(tmp_path / "in.jsonl", 5)
    done = run_cli("infer", "-c", str(config), "--input_path", str(rows), "--output_path",
                   str(tmp_path / "out.jsonl"), "--dry-run", "--generation.max_new_tokens", "4000", env=environ)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    online_cost = re.search(r"estimated cost online: \$([0-9.]+)", done.stdout)
    batch_cost = re.search(r"estimated cost through the batch API: \$([0-9.]+)", done.stdout)
    assert online_cost and batch_cost, done.stdout
    assert float(batch_cost.group(1)) == pytest.approx(float(online_cost.group(1)) / 2, rel=0.05)  # 50% off
    assert not fake.requests


STAGES = {
    "creating (created, reply lost)": ("POST", r"/model-invocation-job", True),
    "waiting": ("GET", r"/model-invocation-job/.+", False),
    "answering online": ("POST", r"/model/[^/]+/converse", False),
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_batch_run_killed_during_a_stage_then_rerun(
    fake: FakeBedrockBatches, cli: tuple[Path, dict[str, str]], tmp_path: Path, stage: str
) -> None:
    config, environ = cli
    rows, out = write_rows(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    ids = [r.row_id for r in iter_rows(str(rows))]
    fake.fail_records, fake.expire_records = {record_id(ids[3])}, {record_id(ids[40])}
    kill_then_rerun(fake, run_args(config, rows, out), environ, out, STAGES[stage],
                    rerun_online=stage == "answering online")  # fmt: skip
    assert len(fake.jobs) == 1  # never created twice
