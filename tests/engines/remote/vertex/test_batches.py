"""GOOGLE_VERTEX batch prediction jobs (submit, status, fetch, cancel, list; `infermux batch run`, killed and
rerun) against the Vertex fake, with input and output in a real Cloud Storage server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("google.auth", reason="needs the vertex extra (google-auth)")
pytest.importorskip("gcp_storage_emulator", reason="needs gcp-storage-emulator (the dev extra)")

from infermux.configs import GenerationParams, ModelParams, RemoteParams
from infermux.engines.remote.vertex.engine import VERTEX_URL_TEMPLATE, GoogleVertexInferenceEngine
from infermux.errors import ConfigError
from infermux.jobs.batch_state import BatchJobState
from infermux.jobs.rows import iter_rows
from tests.conftest import cli_env, run_cli
from tests.engines.remote.batch_runs import kill_then_rerun, run_args, run_to_the_end, write_rows
from tests.engines.remote.vertex.test_engine import _service_account_file
from tests.fakes import FakeVertex, FakeVertexBatches
from tests.servers import GcsServer, gcs_server

PROJECT, REGION, MODEL = "test-project", "us-central1", "gemini-2.5-flash"
TOKEN = "ya29.batch-token"


class Credentials:  # a google-auth credential that never needs refreshing
    token, expiry = TOKEN, None


@pytest.fixture(scope="module")
def gcs() -> Iterator[GcsServer]:
    with gcs_server("vertex-jobs") as server:
        yield server


@pytest.fixture
def fake(gcs: GcsServer) -> Iterator[FakeVertexBatches]:
    with FakeVertexBatches(gcs.endpoint, project=PROJECT, location=REGION, valid_tokens={TOKEN}) as server:
        assert isinstance(server, FakeVertexBatches)
        yield server


@pytest.fixture
def env(gcs: GcsServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    values = gcs.env(VERTEX_BATCH_GCS_URI=f"gs://{gcs.bucket}/{tmp_path.name}")
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


def url(fake: FakeVertex) -> str:
    return VERTEX_URL_TEMPLATE.replace("https://{region}-aiplatform.googleapis.com", fake.url)


def make(fake: FakeVertexBatches) -> Any:
    return GoogleVertexInferenceEngine(
        ModelParams(model_name=f"google/{MODEL}", model_kwargs={"project_id": PROJECT, "region": REGION}),
        generation_params=GenerationParams(max_new_tokens=16),
        remote_params=RemoteParams(api_url=url(fake), max_retries=1, retry_backoff_base=0.01),
        credentials=Credentials(),
    )


def row_label(row_id: str) -> str:
    return "r" + hashlib.sha256(row_id.encode()).hexdigest()[:40]


def test_submit_status_fetch_cancel_and_list(
    fake: FakeVertexBatches, gcs: GcsServer, env: dict[str, str], tmp_path: Path
) -> None:
    rows, out = write_rows(tmp_path / "in.jsonl", 4), tmp_path / "out.jsonl"
    eng = make(fake)
    state = eng.submit_batch(str(rows), str(out))
    [shard] = state.shards
    [job] = fake.jobs.values()
    assert shard.status == "JOB_STATE_PENDING" and shard.batch_id == job["name"]
    assert job["model"] == f"publishers/google/models/{MODEL}"
    # the input is in Cloud Storage: Gemini requests, each labelled with its row
    [uri] = job["inputConfig"]["gcsSource"]["uris"]
    lines = [json.loads(line) for line in gcs.get(uri.split("/", 3)[3]).splitlines()]  # type: ignore[union-attr]
    ids = [r.row_id for r in iter_rows(str(rows))]
    assert [line["request"]["labels"]["infermux_row"] for line in lines] == [row_label(i) for i in ids]
    assert lines[0]["request"]["contents"] == [{"role": "user", "parts": [{"text": "question 0"}]}]
    assert all(r.header("Authorization") == f"Bearer {TOKEN}" for r in fake.requests)
    eng.submit_batch(str(rows), str(out))  # resumed: nothing created twice
    assert len(fake.jobs) == 1
    report = eng.fetch_batch(str(rows), str(out))  # one poll: still running
    assert (report.done, report.pending) == (0, 4)
    report = eng.fetch_batch(str(rows), str(out))
    assert (report.done, report.failed, report.pending) == (4, 0, 0)
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["messages"][0]["content"] for a in answers] == [f"question {i}" for i in range(4)]
    assert all(a["messages"][-1]["role"] == "assistant" and a["messages"][-1]["content"] for a in answers)
    out2 = tmp_path / "out2.jsonl"
    eng.submit_batch(str(rows), str(out2))
    assert eng.cancel_batch(str(out2)).shards[0].status == "JOB_STATE_CANCELLED"  # CANCELLING, then polled
    report = eng.fetch_batch(str(rows), str(out2))
    assert (report.done, report.failed, report.settled) == (0, 4, {})
    errors = [json.loads(line) for line in Path(f"{out2}.errors.jsonl").read_text().splitlines()]
    assert {e["kind"] for e in errors} == {"batch_cancelled"}
    listed = eng.list_batches(limit=1)  # newest first, a page of one
    assert [b["id"] for b in listed] == [BatchJobState.require(out2).shards[0].batch_id]
    assert len(eng.list_batches(limit=5)) == 2


def test_a_failed_row_status_is_a_row_error_and_invalid_rows_are_settled(
    fake: FakeVertexBatches, env: dict[str, str], tmp_path: Path
) -> None:
    rows, out = write_rows(tmp_path / "in.jsonl", 3), tmp_path / "out.jsonl"
    ids = [r.row_id for r in iter_rows(str(rows))]
    fake.fail_rows = {row_label(ids[1])}
    eng = make(fake)
    eng.submit_batch(str(rows), str(out))
    fake.finish_all()
    report = eng.fetch_batch(str(rows), str(out))
    assert (report.done, report.failed, report.settled) == (2, 1, {})  # a 500 is worth answering online
    [error] = [json.loads(line) for line in Path(f"{out}.errors.jsonl").read_text().splitlines()]
    assert error["kind"] == "batch_error" and "INTERNAL" in error["message"]


def test_a_lost_create_reply_finds_the_job_by_its_display_name(
    fake: FakeVertexBatches, env: dict[str, str], tmp_path: Path
) -> None:
    rows, out = write_rows(tmp_path / "in.jsonl", 3), tmp_path / "out.jsonl"
    fake.lose_create_replies = 1  # created, but the client hears 503
    state = make(fake).submit_batch(str(rows), str(out))
    assert len(fake.jobs) == 1 and state.shards[0].batch_id == next(iter(fake.jobs.values()))["name"]


def test_too_many_requests_fail_the_job_and_its_rows_are_answered_online_later(
    fake: FakeVertexBatches, env: dict[str, str], tmp_path: Path
) -> None:
    rows, out = write_rows(tmp_path / "in.jsonl", 3), tmp_path / "out.jsonl"
    fake.max_requests = 2
    eng = make(fake)
    eng.submit_batch(str(rows), str(out))
    fake.finish_all()
    report = eng.fetch_batch(str(rows), str(out))
    assert (report.done, report.failed, report.settled) == (0, 3, {})
    assert BatchJobState.require(out).shards[0].status == "JOB_STATE_FAILED"
    errors = [json.loads(line) for line in Path(f"{out}.errors.jsonl").read_text().splitlines()]
    assert all("at most 2" in e["message"] for e in errors)


def test_batches_are_cut_within_the_limits_and_a_file_over_the_fakes_limit_fails(
    fake: FakeVertexBatches, env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infermux.engines.batch_client import BatchLimits
    from infermux.engines.remote.vertex.batches import VertexBatchClient

    monkeypatch.setattr(VertexBatchClient, "limits", BatchLimits(3, 2**30, separator=1))
    rows, out = write_rows(tmp_path / "in.jsonl", 5), tmp_path / "out.jsonl"
    eng = make(fake)
    state = eng.submit_batch(str(rows), str(out))
    assert [s.requests for s in state.shards] == [3, 2] and len(fake.jobs) == 2
    fake.max_file_bytes = 600  # the three-request file is larger
    fake.finish_all()
    report = eng.fetch_batch(str(rows), str(out))
    assert (report.done, report.failed, report.settled) == (2, 3, {})
    first, second = BatchJobState.require(out).shards
    assert (first.status, second.status) == ("JOB_STATE_FAILED", "JOB_STATE_SUCCEEDED")
    assert "at most 600" in first.errors[0]


def test_no_bucket_is_a_clear_error(fake: FakeVertexBatches, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VERTEX_BATCH_GCS_URI", raising=False)
    rows = write_rows(tmp_path / "in.jsonl", 2)
    with pytest.raises(ConfigError, match="VERTEX_BATCH_GCS_URI"):
        make(fake).submit_batch(str(rows), str(tmp_path / "out.jsonl"))
    assert not fake.requests


# ---------------------------------------------------------------------------------------- the CLI


@pytest.fixture
def cli(fake: FakeVertexBatches, env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A config whose service-account token comes from a separate token server (so the batch fake sees
    only Vertex calls), and the CLI's environment."""
    with FakeVertex(project=PROJECT, location=REGION) as tokens:
        tokens.valid_tokens = fake.valid_tokens  # one set: tokens granted there are accepted here
        key_file = _service_account_file(tmp_path, tokens.url + "/token")
        config = tmp_path / "vertex.yaml"
        config.write_text(json.dumps({
            "model": {"model_name": MODEL, "model_kwargs": {"project_id": PROJECT, "region": REGION}},
            "engine": "GOOGLE_VERTEX", "generation": {"max_new_tokens": 16},
            "remote_params": {"api_url": url(fake), "api_key": str(key_file), "retry_backoff_base": 0.01},
        }))  # fmt: skip
        yield config, cli_env(**env)


def test_batch_run_50_rows_with_a_failed_and_an_expired_row(
    fake: FakeVertexBatches, cli: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    config, environ = cli
    rows, out = write_rows(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    ids = [r.row_id for r in iter_rows(str(rows))]
    fake.fail_rows, fake.expire_rows = {row_label(ids[7])}, {row_label(ids[31])}
    run_to_the_end(fake, run_args(config, rows, out), environ, out, failed=7, expired=31)
    [job] = fake.jobs.values()
    assert job["state"] == "JOB_STATE_EXPIRED"


def test_dry_run_shows_the_batch_price_beside_the_online_price(
    fake: FakeVertexBatches, cli: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    config, environ = cli
    rows = write_rows(tmp_path / "in.jsonl", 5)
    done = run_cli("infer", "-c", str(config), "--input_path", str(rows), "--output_path",
                   str(tmp_path / "out.jsonl"), "--dry-run", "--generation.max_new_tokens", "4000", env=environ)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    online = re.search(r"estimated cost online: \$([0-9.]+)", done.stdout)
    batch = re.search(r"estimated cost through the batch API: \$([0-9.]+)", done.stdout)
    assert online and batch, done.stdout
    assert float(batch.group(1)) == pytest.approx(float(online.group(1)) / 2, rel=0.05)  # Vertex: 50% off
    assert not fake.jobs and not fake.requests  # nothing sent


STAGES = {
    "creating (created, reply lost)": ("POST", r"/v1beta1/projects/[^/]+/locations/[^/]+/batchPredictionJobs", True),
    "waiting": ("GET", r"/v1beta1/projects/[^/]+/locations/[^/]+/batchPredictionJobs/[^/]+", False),
    "answering online": ("POST", r"/v1beta1/.+/chat/completions", False),
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_batch_run_killed_during_a_stage_then_rerun(
    fake: FakeVertexBatches, cli: tuple[Path, dict[str, str]], tmp_path: Path, stage: str
) -> None:
    config, environ = cli
    rows, out = write_rows(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    ids = [r.row_id for r in iter_rows(str(rows))]
    fake.fail_rows, fake.expire_rows = {row_label(ids[3])}, {row_label(ids[40])}
    kill_then_rerun(fake, run_args(config, rows, out), environ, out, STAGES[stage],
                    rerun_online=stage == "answering online")  # fmt: skip
    assert len(fake.jobs) == 1  # never created twice
