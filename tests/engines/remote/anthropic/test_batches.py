"""Anthropic Message Batches (submit, status, fetch, cancel, list) and `infermux batch run` (batch, then
online for what the batch did not answer) against protocol fakes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from infermux.configs import GenerationParams, ModelParams, RemoteParams
from infermux.engines.remote.anthropic.batches import custom_id_for
from infermux.engines.remote.anthropic.engine import AnthropicInferenceEngine
from infermux.jobs.batch_state import BatchJobState
from infermux.jobs.cost import pricing_for
from infermux.jobs.rows import iter_rows
from tests.conftest import run_cli
from tests.fakes import FakeAnthropicBatches, FakeOpenAIBatch

KEY = "sk-ant-test"


@pytest.fixture
def fake() -> Iterator[FakeAnthropicBatches]:
    with FakeAnthropicBatches(api_key=KEY, polls_to_end=2) as server:
        assert isinstance(server, FakeAnthropicBatches)
        yield server


@pytest.fixture
def rows(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"question {i}"}]}) + "\n"
                            for i in range(6)))  # fmt: skip
    return path


def make(fake: FakeAnthropicBatches) -> AnthropicInferenceEngine:
    return AnthropicInferenceEngine(
        ModelParams(model_name="claude-test"),
        generation_params=GenerationParams(max_new_tokens=16),
        remote_params=RemoteParams(api_url=fake.url, api_key=KEY, max_retries=1, retry_backoff_base=0.01),
    )


def ids(path: Path) -> list[str]:
    return [custom_id_for(row.row_id) for row in iter_rows(str(path))]


def count(fake: FakeAnthropicBatches, method: str, path: str) -> int:
    return sum(1 for r in fake.requests if r.method == method and r.path == path)


def test_submit_status_fetch_cancel_and_list(fake: FakeAnthropicBatches, rows: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    eng = make(fake)
    state = eng.submit_batch(str(rows), str(out))
    [shard] = state.shards
    assert shard.batch_id and shard.status == "in_progress" and shard.requests == 6
    sent = fake.batches[shard.batch_id].requests
    assert [r["custom_id"] for r in sent] == ids(rows)
    assert sent[0]["params"] == {"model": "claude-test", "max_tokens": 16, "temperature": 0.0,
                                 "messages": [{"role": "user", "content": "question 0"}],
                                 "cache_control": {"type": "ephemeral"}}  # automatic caching, the default  # fmt: skip
    eng.submit_batch(str(rows), str(out))  # resumed: nothing created twice
    assert count(fake, "POST", "/v1/messages/batches") == 1
    report = eng.fetch_batch(str(rows), str(out))  # one poll: still running
    assert (report.done, report.pending) == (0, 6)
    assert eng.batch_status(str(out)).shards[0].status == "ended"
    report = eng.fetch_batch(str(rows), str(out))
    assert (report.done, report.failed, report.pending) == (6, 0, 0)
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["messages"][0]["content"] for a in answers] == [f"question {i}" for i in range(6)]  # input order
    assert all(a["messages"][-1]["role"] == "assistant" for a in answers)
    # cancel a second job: its requests end canceled, failures worth answering online
    out2 = tmp_path / "out2.jsonl"
    eng.submit_batch(str(rows), str(out2))
    assert eng.cancel_batch(str(out2)).shards[0].status == "canceling"
    report = eng.fetch_batch(str(rows), str(out2))
    assert (report.done, report.failed, report.settled) == (0, 6, {})
    errors = [json.loads(line) for line in Path(str(out2) + ".errors.jsonl").read_text().splitlines()]
    assert {e["kind"] for e in errors} == {"batch_cancelled"}
    listed = eng.list_batches(limit=1)  # most recent first, one page of one
    assert [b["id"] for b in listed] == [BatchJobState.require(out2).shards[0].batch_id]
    assert len(eng.list_batches(limit=5)) == 2


def test_interrupted_create_finds_the_batch_instead_of_creating_another(
    fake: FakeAnthropicBatches, rows: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    eng = make(fake)
    state = eng.submit_batch(str(rows), str(out))
    created = state.shards[0].batch_id
    state.shards[0].batch_id = None  # as if killed after asking, before recording the reply
    state.save()
    again = eng.submit_batch(str(rows), str(out))
    assert again.shards[0].batch_id == created
    assert count(fake, "POST", "/v1/messages/batches") == 1


def test_batch_run_finishes_expired_and_errored_rows_online(
    fake: FakeAnthropicBatches, rows: Path, tmp_path: Path
) -> None:
    custom = ids(rows)
    fake.outcomes = {custom[1]: "expired", custom[2]: "errored", custom[4]: "invalid"}
    config = tmp_path / "anthropic.yaml"
    config.write_text(json.dumps({
        "model": {"model_name": "claude-test"}, "engine": "ANTHROPIC", "generation": {"max_new_tokens": 16},
        "remote_params": {"api_url": fake.url, "api_key": KEY, "retry_backoff_base": 0.01},
    }))  # fmt: skip
    out = tmp_path / "out.jsonl"
    args = ["batch", "run", "-c", str(config), "--input_path", str(rows), "--output_path", str(out),
            "--poll-interval", "0.05"]  # fmt: skip
    first = run_cli(*args)
    assert first.returncode == 3, first.stderr  # one row is invalid for good
    assert "batch: 1/1 batches ended" in first.stdout and "online: 2 rows answered, 1 failed" in first.stdout
    assert count(fake, "POST", "/v1/messages/batches") == 1
    online = [r.json["messages"][0]["content"] for r in fake.requests if r.path == "/v1/messages"]
    assert sorted(online) == ["question 1", "question 2"]  # the invalid row is not resent
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["messages"][0]["content"] for a in answers] == [f"question {i}" for i in (0, 1, 2, 3, 5)]
    [error] = [json.loads(line) for line in Path(str(out) + ".errors.jsonl").read_text().splitlines()]
    assert error["kind"] == "batch_error" and error["line"] == 5 and "invalid_request_error" in error["message"]
    # rerun: nothing submitted or answered twice
    before = len(fake.requests)
    again = run_cli(*args)
    assert again.returncode == 3, again.stderr
    assert count(fake, "POST", "/v1/messages/batches") == 1
    assert [r.path for r in fake.requests[before:] if r.method == "POST"] == []
    assert len(out.read_text().splitlines()) == 5


def test_batch_run_with_openai_answers_failed_rows_online(rows: Path, tmp_path: Path) -> None:
    with FakeOpenAIBatch(api_key="sk-test", fail_status=500) as server:
        assert isinstance(server, FakeOpenAIBatch)
        row_ids = [row.row_id for row in iter_rows(str(rows))]
        server.fail_custom_ids = {row_ids[0], row_ids[3]}
        config = tmp_path / "openai.yaml"
        config.write_text(json.dumps({
            "model": {"model_name": "gpt-4o-mini"}, "engine": "OPENAI", "generation": {"max_new_tokens": 16},
            "remote_params": {"api_url": server.url + "/v1", "api_key": "sk-test", "retry_backoff_base": 0.01},
        }))  # fmt: skip
        out = tmp_path / "out.jsonl"
        proc = run_cli("batch", "run", "-c", str(config), "--input_path", str(rows), "--output_path", str(out),
                       "--poll-interval", "0.01")  # fmt: skip
        assert proc.returncode == 0, proc.stderr + proc.stdout
        online = [r.json["messages"][0]["content"] for r in server.requests if r.path == "/v1/chat/completions"]
        assert sorted(online) == ["question 0", "question 3"]
        answers = [json.loads(line) for line in out.read_text().splitlines()]
        assert [a["messages"][0]["content"] for a in answers] == [f"question {i}" for i in range(6)]
        assert not Path(str(out) + ".partial.jsonl").exists()
        # batch rows at the batch price (half), online rows at the online price, from genai-prices
        pricing = pricing_for("OPENAI", "gpt-4o-mini")
        assert pricing is not None
        for i, answer in enumerate(answers):
            usage = answer["metadata"]["usage"]
            batch = i not in (0, 3)
            assert answer["metadata"]["cost_usd"] == pytest.approx(pricing.cost(usage, batch=batch), rel=1e-6)
