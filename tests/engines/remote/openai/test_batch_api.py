"""The OpenAI Batch API flow (submit, status, fetch, rerun online) against the Files/Batches fake."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from infermux.configs import GenerationParams, ModelParams, RemoteParams
from infermux.engines.remote.openai.openai import OpenAIInferenceEngine
from infermux.errors import ConfigError, RemoteError
from infermux.jobs.batch_state import BatchJobState, state_path
from infermux.jobs.rows import iter_rows
from infermux.types import Conversation
from tests.fakes import FakeOpenAIBatch

KEY = "sk-test"


@pytest.fixture
def fake() -> Iterator[FakeOpenAIBatch]:
    with FakeOpenAIBatch(api_key=KEY) as server:
        yield server


def make(fake: FakeOpenAIBatch, max_requests: int = 50_000) -> OpenAIInferenceEngine:
    eng = OpenAIInferenceEngine(
        ModelParams(model_name="gpt-4o-mini"),
        generation_params=GenerationParams(max_new_tokens=32),
        remote_params=RemoteParams(api_url=fake.url + "/v1", api_key=KEY, max_retries=1, retry_backoff_base=0.01),
    )
    eng.batch_max_requests = max_requests
    return eng


@pytest.fixture
def rows(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    lines = [{"messages": [{"role": "user", "content": f"question {i}"}]} for i in range(5)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def posts(fake: FakeOpenAIBatch, path: str) -> int:
    return sum(1 for r in fake.requests if r.method == "POST" and r.path == path)


def read(path: Path) -> list[Conversation]:
    return [Conversation.model_validate_json(line) for line in path.read_text().splitlines()]


def test_submit_splits_uploads_and_records_batches(fake: FakeOpenAIBatch, rows: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    state = make(fake, max_requests=2).submit_batch(str(rows), str(out))
    assert [s.requests for s in state.shards] == [2, 2, 1]
    assert all(s.batch_id and s.input_file_id for s in state.shards)
    assert state_path(out).exists() and BatchJobState.load(out) is not None
    ids = [r.row_id for r in iter_rows(rows)]
    uploaded = [f for f in fake.files.values() if f.purpose == "batch"]
    lines = [json.loads(line) for f in uploaded for line in f.data.decode().splitlines()]
    assert [line["custom_id"] for line in lines] == ids
    assert {line["url"] for line in lines} == {"/v1/chat/completions"}
    assert lines[0]["body"]["model"] == "gpt-4o-mini" and lines[0]["body"]["max_completion_tokens"] == 32
    created = [r.json for r in fake.requests if r.path == "/v1/batches" and r.method == "POST"]
    assert [c["metadata"]["infermux_shard"] for c in created] == ["0", "1", "2"]
    assert {c["completion_window"] for c in created} == {"24h"}


def test_resubmitting_never_creates_a_second_batch(fake: FakeOpenAIBatch, rows: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    eng = make(fake, max_requests=2)
    eng.submit_batch(str(rows), str(out))
    eng.submit_batch(str(rows), str(out))
    assert posts(fake, "/v1/batches") == 3 and posts(fake, "/v1/files") == 3

    # Killed right after asking for shard 1's batch, before its id was saved: found by metadata.
    state = BatchJobState.require(out)
    state.shards[1].batch_id = None
    state.save()
    # Killed after uploading shard 2's file, before asking for its batch: no second upload.
    state.shards[2].batch_id, state.shards[2].create_started = None, False
    state.save()
    fake.batches.pop(next(b for b in fake.batches if fake.batches[b].obj["metadata"]["infermux_shard"] == "2"))
    state = eng.submit_batch(str(rows), str(out))
    assert posts(fake, "/v1/files") == 3  # nothing re-uploaded
    assert posts(fake, "/v1/batches") == 4  # only shard 2's batch, which really did not exist
    assert len({s.batch_id for s in state.shards}) == 3


def test_a_lost_create_reply_does_not_create_a_second_batch(fake: FakeOpenAIBatch, rows: Path, tmp_path: Path) -> None:
    fake.lose_create_replies = 1
    state = make(fake).submit_batch(str(rows), str(tmp_path / "out.jsonl"))
    assert len(fake.batches) == 1 and posts(fake, "/v1/batches") == 1
    assert state.shards[0].batch_id == next(iter(fake.batches))


def test_status_and_fetch_map_results_by_custom_id(fake: FakeOpenAIBatch, rows: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    eng = make(fake, max_requests=2)
    eng.submit_batch(str(rows), str(out))
    report = eng.fetch_batch(str(rows), str(out))  # batches are still running: nothing to write yet
    assert (report.done, report.pending) == (0, 5)
    for _ in range(3):
        state = eng.batch_status(str(out))
    assert {s.status for s in state.shards} == {"completed"}
    assert all(s.request_counts["completed"] == s.requests for s in state.shards)
    report = eng.fetch_batch(str(rows), str(out))
    assert (report.done, report.failed, report.pending) == (5, 0, 0)
    answers = read(out)
    # The fake writes results in reverse order; they come back in input order.
    assert [a.messages[0].content for a in answers] == [f"question {i}" for i in range(5)]
    assert [a.last_message.text for a in answers] == [
        f"system=- | turns=1 | images=0 | last=question {i}" for i in range(5)
    ]
    assert answers[0].metadata["usage"]["total_tokens"] > 0
    assert not Path(str(out) + ".partial.jsonl").exists()


def test_failed_rows_go_to_the_errors_file_and_rerun_online(fake: FakeOpenAIBatch, rows: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    eng = make(fake)
    ids = [r.row_id for r in iter_rows(rows)]
    fake.fail_custom_ids = {ids[1], ids[3]}
    eng.submit_batch(str(rows), str(out))
    fake.finish_all()
    report = eng.fetch_batch(str(rows), str(out))
    assert (report.done, report.failed) == (3, 2) and report.errors_path
    errors = [json.loads(line) for line in Path(report.errors_path).read_text().splitlines()]
    assert [e["id"] for e in errors] == [ids[1], ids[3]]
    assert all(e["status"] == 400 and "rejected by the fake" in e["message"] for e in errors)

    fake.fail_custom_ids.clear()
    online_before = posts(fake, "/v1/chat/completions")
    result = asyncio.run(eng.run_file(str(rows), str(out)))  # the online job resumes: only failed rows run
    assert result.failed == 0 and result.resumed == 3
    sent = [r.json["messages"][0]["content"] for r in fake.requests if r.path == "/v1/chat/completions"]
    assert posts(fake, "/v1/chat/completions") - online_before == 2 and sorted(sent) == ["question 1", "question 3"]
    assert [a.last_message.text.split("last=")[1] for a in read(out)] == [f"question {i}" for i in range(5)]


def test_a_batch_that_fails_validation_fails_its_rows(fake: FakeOpenAIBatch, rows: Path, tmp_path: Path) -> None:
    fake.max_requests = 3  # the provider's limit is lower than the engine believes
    out = tmp_path / "out.jsonl"
    eng = make(fake)
    eng.submit_batch(str(rows), str(out))
    report = eng.fetch_batch(str(rows), str(out))
    assert report.failed == 5
    errors = [json.loads(line) for line in Path(str(report.errors_path)).read_text().splitlines()]
    assert errors[0]["kind"] == "batch_failed" and "limit is 3" in errors[0]["message"]


def test_size_limit_splits_files(fake: FakeOpenAIBatch, rows: Path, tmp_path: Path) -> None:
    eng = make(fake)
    eng.batch_max_bytes = 400  # about two request lines
    state = eng.submit_batch(str(rows), str(tmp_path / "out.jsonl"))
    assert len(state.shards) >= 3 and all(s.bytes <= 400 for s in state.shards)
    assert sum(s.requests for s in state.shards) == 5


def test_another_config_cannot_reuse_the_record(fake: FakeOpenAIBatch, rows: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    make(fake).submit_batch(str(rows), str(out))
    other = OpenAIInferenceEngine(
        ModelParams(model_name="gpt-4o"), remote_params=RemoteParams(api_url=fake.url + "/v1", api_key=KEY)
    )
    with pytest.raises(ConfigError, match="another config"):
        other.submit_batch(str(rows), str(out))
    with pytest.raises(ConfigError, match="no batch job is recorded"):
        make(fake).batch_status(str(tmp_path / "elsewhere.jsonl"))


def test_wrong_key_is_a_clear_error(fake: FakeOpenAIBatch, rows: Path, tmp_path: Path) -> None:
    eng = OpenAIInferenceEngine(
        ModelParams(model_name="gpt-4o-mini"), remote_params=RemoteParams(api_url=fake.url + "/v1", api_key="sk-bad")
    )
    with pytest.raises(Exception, match="OPENAI_API_KEY") as info:
        eng.submit_batch(str(rows), str(tmp_path / "out.jsonl"))
    assert "sk-bad" not in str(info.value)


def test_cancel_and_list(fake: FakeOpenAIBatch, rows: Path, tmp_path: Path) -> None:
    """``POST /v1/batches/{id}/cancel`` and the paginated ``GET /v1/batches``: canceled rows fail, worth rerunning."""
    fake.advance_on_poll = False
    eng = make(fake, max_requests=2)
    out = tmp_path / "out.jsonl"
    state = eng.submit_batch(str(rows), str(out))
    assert eng.batch_client().can_cancel and eng.batch_client().can_list  # type: ignore[union-attr]
    assert [s.status for s in eng.cancel_batch(str(out)).shards] == ["cancelling"] * 3
    assert posts(fake, "/v1/batches/" + str(state.shards[0].batch_id) + "/cancel") == 1
    fake.finish_all()
    report = eng.fetch_batch(str(rows), str(out))
    assert (report.done, report.failed, report.pending, report.settled) == (0, 5, 0, {})
    errors = [json.loads(line) for line in Path(f"{out}.errors.jsonl").read_text().splitlines()]
    assert {e["kind"] for e in errors} == {"batch_cancelled"}
    newest_first = [s.batch_id for s in reversed(state.shards)]
    assert [b["id"] for b in eng.list_batches(limit=2)] == newest_first[:2]  # one page of two
    assert [b["id"] for b in eng.list_batches(limit=10)] == newest_first
    fake.finish_all()
    with pytest.raises(RemoteError, match=r"Cannot cancel"):
        asyncio.run(_cancel(eng, str(state.shards[0].batch_id)))


async def _cancel(eng: OpenAIInferenceEngine, batch_id: str) -> None:
    async with eng.batch_client() as client:  # type: ignore[union-attr]
        await client.cancel(batch_id)
