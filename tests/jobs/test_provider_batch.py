"""A provider batch job writes the output file the online job writes, byte for byte, apart from the answers.

Both jobs run on the same input against the same protocol-faithful fake (OpenAI's Files + Batches beside
its chat completions; Anthropic's Message Batches beside its Messages API). The fakes answer a request
the same way online and in a batch, so the only field of an answer that may differ is its price:
``cost_usd`` is at the batch rate for fetched rows. Everything else (row order, ``conversation_id``
defaulted to the row id, the input's own id and metadata, key order, number formatting, non-ASCII text)
must be the same bytes, because every writer records rows through ``jobs.loop.record_result``.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from infermux.configs import GenerationParams, ModelParams, RemoteParams
from infermux.engines.remote.anthropic import AnthropicInferenceEngine
from infermux.engines.remote.openai.openai import OpenAIInferenceEngine
from infermux.jobs import provider_batch
from infermux.jobs.batch_state import BatchJobState
from tests.fakes import FakeAnthropicBatches, FakeOpenAIBatch

ROWS: list[dict[str, Any]] = [
    {"messages": [{"role": "user", "content": "question 0"}]},
    {"conversation_id": "mine", "messages": [{"role": "system", "content": "be brief"},
                                              {"role": "user", "content": "question 1"}],
     "metadata": {"source": "unit", "n": 1}},
    {"messages": [{"role": "user", "content": "héllo wörld 🙂 question 2"}], "metadata": {"tags": ["a", "b"]}},
    {"messages": [{"role": "user", "content": "first"}, {"role": "assistant", "content": "an earlier answer"},
                  {"role": "user", "content": "question 3"}]},
]  # fmt: skip
_COST = re.compile(rb'"cost_usd":[-+0-9.eE]+')


def _input(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in ROWS), encoding="utf-8")
    return path


def _without_prices(data: bytes) -> bytes:
    return _COST.sub(b'"cost_usd":0', data)


def _same_apart_from_prices(online: Path, batch: Path) -> None:
    online_bytes, batch_bytes = online.read_bytes(), batch.read_bytes()
    assert len(online_bytes.splitlines()) == len(ROWS)
    assert _without_prices(batch_bytes) == _without_prices(online_bytes)


def _finish(engine: Any, rows: Path, out: Path) -> None:
    provider_batch.submit(engine, str(rows), str(out))
    for _ in range(5):
        if provider_batch.status(engine, str(out)).all_terminal:
            break
    report = provider_batch.fetch(engine, str(rows), str(out))
    assert (report.done, report.failed, report.pending) == (len(ROWS), 0, 0)


def test_openai_batch_output_equals_the_online_output(tmp_path: Path) -> None:
    rows = _input(tmp_path)
    with FakeOpenAIBatch(api_key="sk-test") as fake:
        engine = OpenAIInferenceEngine(
            ModelParams(model_name="gpt-4o-mini"),
            generation_params=GenerationParams(max_new_tokens=32),
            remote_params=RemoteParams(api_url=fake.url + "/v1", api_key="sk-test", retry_backoff_base=0.01),
        )
        online = asyncio.run(engine.run_file(str(rows), str(tmp_path / "online.jsonl")))
        assert online.failed == 0
        _finish(engine, rows, tmp_path / "batch.jsonl")
    _same_apart_from_prices(tmp_path / "online.jsonl", tmp_path / "batch.jsonl")
    # the one difference allowed: the batch price, half the online one where genai-prices knows the model
    online_costs = [json.loads(line)["metadata"].get("cost_usd") for line in (tmp_path / "online.jsonl").open()]
    batch_costs = [json.loads(line)["metadata"].get("cost_usd") for line in (tmp_path / "batch.jsonl").open()]
    if all(c is not None for c in online_costs):
        assert batch_costs == [pytest.approx(c / 2, rel=1e-6) for c in online_costs]


def test_anthropic_batch_output_equals_the_online_output(tmp_path: Path) -> None:
    rows = _input(tmp_path)
    with FakeAnthropicBatches(api_key="sk-ant-test", polls_to_end=1) as fake:
        assert isinstance(fake, FakeAnthropicBatches)
        engine = AnthropicInferenceEngine(
            ModelParams(model_name="claude-test"),
            generation_params=GenerationParams(max_new_tokens=16),
            # Prompt caching off: with it, the batch job (second) would read what the online job (first)
            # cached, and the usage's cache counts would differ as they would at Anthropic.
            remote_params=RemoteParams(
                api_url=fake.url, api_key="sk-ant-test", retry_backoff_base=0.01, anthropic_prompt_caching=False
            ),
        )
        online = asyncio.run(engine.run_file(str(rows), str(tmp_path / "online.jsonl")))
        assert online.failed == 0
        _finish(engine, rows, tmp_path / "batch.jsonl")
        assert BatchJobState.require(tmp_path / "batch.jsonl").all_terminal
    _same_apart_from_prices(tmp_path / "online.jsonl", tmp_path / "batch.jsonl")


def test_a_record_written_before_shards_kept_ended_still_loads(tmp_path: Path) -> None:
    """Records written before ``ended`` existed tell a finished batch by its status word."""
    out = tmp_path / "out.jsonl"
    shard = {"index": 0, "first_index": 0, "last_index": 1, "requests": 2, "bytes": 10, "batch_id": "b"}
    record = {"version": 1, "fingerprint": "f", "input_path": "in.jsonl", "endpoint": "/v1/chat/completions",
              "completion_window": "24h", "job_id": "j", "rows_digest": "", "build_errors": {},
              "shards": [{**shard, "status": "completed"}, {**shard, "index": 1, "status": "in_progress"},
                         {**shard, "index": 2, "status": "ended"}]}  # fmt: skip
    (tmp_path / "out.jsonl.batch.json").write_text(json.dumps(record))
    state = BatchJobState.require(out)
    assert [s.terminal for s in state.shards] == [True, False, True]
    state.save()
    assert [s["ended"] for s in json.loads((tmp_path / "out.jsonl.batch.json").read_text())["shards"]] == [
        True,
        False,
        True,
    ]


def test_a_batch_api_that_cannot_be_reached_is_one_clear_error(tmp_path: Path) -> None:
    """As for online jobs: "cannot reach URL", not the HTTP client's exception name."""
    from infermux.errors import ServerUnreachableError
    from tests.servers import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    engine = OpenAIInferenceEngine(
        ModelParams(model_name="gpt-4o-mini"),
        remote_params=RemoteParams(api_url=url, api_key="sk-test", max_retries=0, retry_backoff_base=0.01),
    )
    with pytest.raises(ServerUnreachableError, match=f"cannot reach {url} .*rerun the same command"):
        provider_batch.submit(engine, str(_input(tmp_path)), str(tmp_path / "out.jsonl"))


def test_a_parquet_table_goes_to_a_batch_with_each_rows_settings(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from infermux.jobs.tables import TableColumns

    rows = [{"q": f"table question {i}", "k": i, "generation": {"max_new_tokens": 4 + i}} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    columns = TableColumns(prompt_column="q")
    with FakeOpenAIBatch(api_key="sk-test") as fake:
        engine = OpenAIInferenceEngine(
            ModelParams(model_name="gpt-4o-mini"),
            generation_params=GenerationParams(max_new_tokens=32),
            remote_params=RemoteParams(api_url=fake.url + "/v1", api_key="sk-test", retry_backoff_base=0.01),
        )
        out = tmp_path / "out.parquet"
        provider_batch.submit(engine, str(tmp_path / "in.parquet"), str(out), columns=columns)
        lines = [json.loads(line) for f in fake.files.values() for line in f.data.decode().splitlines()]
        # each request with its row's settings
        assert [line["body"]["max_completion_tokens"] for line in lines] == [4, 5, 6]
        assert lines[0]["body"]["messages"] == [{"role": "user", "content": "table question 0"}]
        while not provider_batch.status(engine, str(out)).all_terminal:
            pass
        report = provider_batch.fetch(engine, str(tmp_path / "in.parquet"), str(out), columns=columns)
        assert (report.done, report.failed, report.pending) == (3, 0, 0)
    table = pq.read_table(out)
    assert table.column("k").to_pylist() == [0, 1, 2] and None not in table.column("answer").to_pylist()
