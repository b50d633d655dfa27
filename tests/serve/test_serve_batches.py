"""``infermux serve``'s Files and Batch API, driven by the official openai SDK: a gateway serve (REMOTE) in
front of a counting upstream on 127.0.0.1, so a batch is fast and every answer the upstream sent is
counted per row. Includes the ``kill -9`` restart: the batch goes on and no row is answered twice."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import cli_env
from tests.fakes.row_counter import RowCounter
from tests.serve.running import Served, serve

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.slow

MODEL = "gpt-fake"
KEY = "gw-batch-key-2b7e151628"
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def upstream() -> Iterator[RowCounter]:
    with RowCounter() as stub:
        assert isinstance(stub, RowCounter)
        yield stub


@pytest.fixture
def stub(upstream: RowCounter) -> Iterator[RowCounter]:
    upstream.reset()
    upstream.latency_s = 0.0
    yield upstream
    upstream.reset()


def gateway_config(folder: Path, stub: RowCounter) -> Path:
    config = folder / "gateway.yaml"
    config.write_text(
        f"engine: REMOTE\nmodel:\n  model_name: {MODEL}\ngeneration:\n  max_new_tokens: 32\n"
        f"remote_params:\n  api_url: {stub.url}/v1\n  api_key: sk-up\n  num_workers: 8\n"
        "  max_retries: 1\n  retry_backoff_base: 0.05\n  retry_backoff_max: 0.1\n"
    )
    return config


def start(tmp_path: Path, stub: RowCounter, *extra: str) -> Any:
    config = gateway_config(tmp_path, stub)
    args = ("-c", str(config), "--batch-dir", str(tmp_path / "batches"), *extra)
    return serve(*args, env=cli_env(INFERMUX_API_KEY=KEY), timeout=120)


def sdk(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.api, api_key=KEY, max_retries=0, timeout=60)


def request_line(custom_id: str, text: str, **body: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": text}]
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": MODEL, "messages": messages, **body},
    }


def upload(client: openai.OpenAI, lines: list[dict[str, Any]] | list[str], name: str = "in.jsonl") -> str:
    data = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    return client.files.create(file=(name, data.encode()), purpose="batch").id


def submit(client: openai.OpenAI, lines: list[dict[str, Any]] | list[str], **kw: Any) -> Any:
    return client.batches.create(input_file_id=upload(client, lines), endpoint=CHAT, completion_window="24h", **kw)


def wait(client: openai.OpenAI, batch_id: str, done: Any = None, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if done(batch) if done else batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}: {batch.request_counts}"
        time.sleep(0.1)


def results(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def metric(served: Served, name: str) -> float:
    request = urllib.request.Request(served.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_sdk_batch_end_to_end_with_a_refused_request(tmp_path: Path, stub: RowCounter) -> None:
    lines = [request_line(f"row-{i}", f"question {i}", max_tokens=16) for i in range(40)]
    lines.append(request_line("too-hot", "hi", temperature=9))  # the chat route answers 400: this request alone fails
    with start(tmp_path, stub) as served:
        client = sdk(served)
        created = submit(client, lines, metadata={"team": "eval"})
        assert created.status == "validating" and created.metadata == {"team": "eval"}
        batch = wait(client, created.id)
        assert batch.status == "completed", batch
        assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (41, 40, 1)
        assert batch.in_progress_at and batch.finalizing_at and batch.completed_at and batch.errors is None
        out = results(client, batch.output_file_id)
        assert sorted(r["custom_id"] for r in out) == sorted(f"row-{i}" for i in range(40))
        for record in out:
            assert record["id"].startswith("batch_req_") and record["error"] is None
            response = record["response"]
            assert response["status_code"] == 200 and response["request_id"]
            number = record["custom_id"].split("-")[1]
            assert response["body"]["object"] == "chat.completion" and response["body"]["model"] == MODEL
            assert response["body"]["choices"][0]["message"]["content"] == f"echo question {number}"
        (failed,) = results(client, batch.error_file_id)
        assert failed["custom_id"] == "too-hot" and failed["response"]["status_code"] == 400
        assert failed["response"]["body"]["error"]["param"] == "temperature"
        assert stub.answered == {f"question {i}": 1 for i in range(40)}  # the refused one never went upstream
        assert metric(served, 'infermux_batch_rows_total{result="completed"}') == 40
        assert metric(served, 'infermux_batch_rows_total{result="failed"}') == 1
        files = client.files.list()
        assert {f.id for f in files.data} >= {batch.input_file_id, batch.output_file_id, batch.error_file_id}
        output = client.files.retrieve(batch.output_file_id)
        assert output.purpose == "batch_output" and output.bytes > 0
        assert [f.id for f in client.files.list(purpose="batch").data] == [batch.input_file_id]
        assert client.files.delete(batch.input_file_id).deleted
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(batch.input_file_id)
        assert client.batches.retrieve(batch.id).status == "completed"  # the batch keeps its results
        assert not (tmp_path / "batches" / "batches" / batch.id).exists()  # its job folder went with the results
        assert (tmp_path / "batches" / "batches" / f"{batch.id}.json").exists()


def test_the_key_is_required_for_files_and_batches(tmp_path: Path, stub: RowCounter) -> None:
    with start(tmp_path, stub) as served:
        stranger = openai.OpenAI(base_url=served.api, api_key="wrong-key-123", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            stranger.files.create(file=("in.jsonl", b"{}\n"), purpose="batch")
        with pytest.raises(openai.AuthenticationError):
            stranger.batches.list()


def test_bad_lines_fail_the_batch_naming_each_line(tmp_path: Path, stub: RowCounter) -> None:
    lines: list[dict[str, Any]] = [
        request_line("a", "ok"),
        request_line("a", "again"),  # line 2: custom_id repeated
        {**request_line("b", "x"), "method": "GET"},  # line 3
        {**request_line("c", "x"), "url": "/v1/embeddings"},  # line 4
        {"custom_id": "d", "method": "POST", "url": CHAT},  # line 5: no body
        request_line("e", "x") | {"body": {"model": "other-model", "messages": []}},  # line 6
    ]
    with start(tmp_path, stub) as served:
        client = sdk(served)
        batch = wait(client, submit(client, lines).id)
        assert batch.status == "failed" and batch.failed_at and batch.output_file_id is None
        errors = {e.line: e for e in batch.errors.data}
        assert sorted(errors) == [2, 3, 4, 5, 6]
        assert errors[2].code == "duplicate_custom_id" and "'a'" in errors[2].message
        assert errors[3].code == "invalid_method" and errors[4].code == "mismatched_endpoint"
        assert errors[5].param == "body" and errors[6].code == "model_not_found"
        assert stub.total == 0  # nothing ran
        # what the upload itself refuses: a line that is not JSON, a file that is not .jsonl, another purpose
        with pytest.raises(openai.BadRequestError, match="Line 2 is not valid JSON"):
            upload(client, [json.dumps(request_line("a", "x")), "{not json"])
        with pytest.raises(openai.BadRequestError, match=r"Must be \.jsonl"):
            upload(client, [request_line("a", "x")], name="in.csv")
        with pytest.raises(openai.BadRequestError, match="purpose must be 'batch'"):
            client.files.create(file=("in.jsonl", b"{}\n"), purpose="fine-tune")
        file_id = upload(client, [request_line("a", "x")])
        with pytest.raises(openai.BadRequestError, match="completion_window"):
            client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="1h")  # type: ignore[arg-type]
        with pytest.raises(openai.BadRequestError, match="endpoint"):
            client.batches.create(input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h")
        with pytest.raises(openai.NotFoundError):
            client.batches.create(input_file_id="file-000000000000000000000000", endpoint=CHAT, completion_window="24h")
        with pytest.raises(openai.NotFoundError):
            client.batches.retrieve("batch_../../etc")
        big = [json.dumps(request_line(f"big-{i}", "x" * 9000)) for i in range(1100)]  # ~10 MB: over --max-body-mb 8
        assert client.files.retrieve(upload(client, big)).bytes > 8 * 2**20


def test_cancel_keeps_what_was_answered_and_marks_the_rest(tmp_path: Path, stub: RowCounter) -> None:
    stub.latency_s = 0.1
    lines = [request_line(f"r{i}", f"slow {i}") for i in range(60)]
    with start(tmp_path, stub, "--batch-concurrency", "2") as served:
        client = sdk(served)
        created = submit(client, lines)
        wait(client, created.id, lambda b: b.request_counts.completed >= 4)
        cancelling = client.batches.cancel(created.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at
        batch = wait(client, created.id)
        assert batch.status == "cancelled" and batch.cancelled_at
        done, missing = results(client, batch.output_file_id), results(client, batch.error_file_id)
        assert 4 <= len(done) < 60 and len(done) + len(missing) == 60
        assert {r["custom_id"] for r in done}.isdisjoint(r["custom_id"] for r in missing)
        assert all(r["response"] is None and r["error"]["code"] == "batch_cancelled" for r in missing)
        assert batch.request_counts.completed == len(done)
        assert sum(stub.answered.values()) <= len(done) + 2  # at most the rows in flight at the cancel
        with pytest.raises(openai.ConflictError):
            client.batches.cancel(created.id)


def test_list_pages_newest_first_with_after_and_limit(tmp_path: Path, stub: RowCounter) -> None:
    with start(tmp_path, stub) as served:
        client = sdk(served)
        ids = [submit(client, [request_line("only", f"batch {i}")]).id for i in range(5)]
        first = client.batches.list(limit=2)
        assert [b.id for b in first.data] == ids[::-1][:2] and first.has_more
        second = client.batches.list(limit=2, after=first.data[-1].id)
        assert [b.id for b in second.data] == ids[::-1][2:4] and second.has_more
        assert [b.id for b in client.batches.list(limit=2)] == ids[::-1]  # the SDK's auto-paging follows after=
        last = client.batches.list(limit=100, after=ids[1])
        assert [b.id for b in last.data] == [ids[0]] and not last.has_more
        with pytest.raises(openai.BadRequestError, match="limit"):
            client.batches.list(limit=101)


def test_kill_9_mid_batch_then_restart_answers_every_row_exactly_once(tmp_path: Path, stub: RowCounter) -> None:
    rows = 120
    lines = [request_line(f"k{i}", f"kill {i}") for i in range(rows)]
    stub.hold_after = 50  # the upstream answers 50 rows, then holds the rest: the server is killed mid-batch
    with start(tmp_path, stub, "--batch-concurrency", "4") as served:
        client = sdk(served)
        created = submit(client, lines)
        wait(client, created.id, lambda b: b.request_counts.completed >= 50)
        served.kill()  # SIGKILL: no clean-up at all
    before = dict(stub.answered)
    assert sum(before.values()) == 50
    stub.hold_after = None
    # restarted with other generation defaults: the batch keeps those it was submitted under
    with start(tmp_path, stub, "--batch-concurrency", "4", "--generation.max_new_tokens", "48") as served:
        client = sdk(served)
        assert client.files.retrieve(created.input_file_id).purpose == "batch"  # files and batches persisted
        batch = wait(client, created.id)
        assert batch.status == "completed" and batch.request_counts.completed == rows
        out = results(client, batch.output_file_id)
        assert sorted(r["custom_id"] for r in out) == sorted(f"k{i}" for i in range(rows))  # each row once
        assert batch.error_file_id is None
        assert stub.answered == {f"kill {i}": 1 for i in range(rows)}  # no row answered twice
        assert [b.id for b in client.batches.list().data] == [created.id]


def test_a_second_server_on_the_same_batch_dir_is_refused_or_runs_without_the_default(
    tmp_path: Path, stub: RowCounter
) -> None:
    state = tmp_path / "state"
    config, env = gateway_config(tmp_path, stub), cli_env(INFERMUX_API_KEY=KEY)
    args = (
        "-c",
        str(config),
        "--batch-dir",
        str(state / "infermux" / "batches"),
    )  # the default of XDG_STATE_HOME=state
    with serve(*args, env=env) as first:
        with pytest.raises(RuntimeError, match="another infermux serve uses it"), serve(*args, env=env):
            pass
        with serve("-c", str(config), env=cli_env(INFERMUX_API_KEY=KEY, XDG_STATE_HOME=str(state))) as second:
            assert "this one has no Batch API" in second.log()
            with pytest.raises(openai.NotFoundError, match="--batch-dir"):
                sdk(second).batches.list()
            assert sdk(second).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert sdk(first).batches.list().data == []


def test_infermux_batch_run_pointed_at_the_server(tmp_path: Path, stub: RowCounter) -> None:
    from tests.conftest import run_cli

    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(
        "".join(json.dumps({"messages": [{"role": "user", "content": f"via cli {i}"}]}) + "\n" for i in range(6))
    )
    with start(tmp_path, stub) as served:
        config = tmp_path / "client.yaml"
        config.write_text(
            f"engine: OPENAI\nmodel:\n  model_name: {MODEL}\ngeneration:\n  max_new_tokens: 16\n"
            f"remote_params:\n  api_url: {served.api}\n  api_key_env_varname: GW_KEY\n  max_retries: 1\n"
        )
        args = ("batch", "run", "-c", str(config), "--input_path", str(inp), "--output_path", str(out))
        proc = run_cli(*args, "--poll-interval", "0.2", env=cli_env(GW_KEY=KEY), timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        answers = [json.loads(line)["messages"][-1]["content"] for line in out.read_text().splitlines()]
        assert answers == [f"echo via cli {i}" for i in range(6)]
        assert stub.answered == {f"via cli {i}": 1 for i in range(6)}
        (batch,) = sdk(served).batches.list().data
        assert batch.status == "completed" and batch.request_counts.completed == 6


def test_a_batch_on_a_local_engine_served_through_the_batcher(tmp_path: Path) -> None:
    """ECHO (local, answers whole, one call at a time): batch rows queue in the batcher behind live requests."""
    with serve("--engine", "ECHO", "--batch-dir", str(tmp_path / "b"), timeout=120) as served:
        client = openai.OpenAI(base_url=served.api, api_key="unused", max_retries=0, timeout=60)
        model = client.models.list().data[0].id
        lines = [request_line(f"e{i}", f"echo me {i}") | {"body": {"model": model, "messages": [
            {"role": "user", "content": f"echo me {i}"}]}} for i in range(30)]  # fmt: skip
        created = submit(client, lines)
        live = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "live one"}])
        assert "live one" in (live.choices[0].message.content or "")
        batch = wait(client, created.id)
        assert batch.status == "completed" and batch.request_counts.completed == 30
        out = {r["custom_id"]: r["response"]["body"]["choices"][0]["message"]["content"] for r in
               results(client, batch.output_file_id)}  # fmt: skip
        assert sorted(out) == sorted(f"e{i}" for i in range(30))
        assert all(f"echo me {cid[1:]}" in text for cid, text in out.items())


def test_a_batch_past_its_window_expires_with_what_it_answered(tmp_path: Path, stub: RowCounter) -> None:
    lines = [request_line(f"x{i}", f"expire {i}") for i in range(30)]
    stub.hold_after = 10
    with start(tmp_path, stub) as served:
        client = sdk(served)
        created = submit(client, lines)
        wait(client, created.id, lambda b: b.request_counts.completed >= 10)
        served.kill()
    stored = tmp_path / "batches" / "batches" / f"{created.id}.json"
    obj = json.loads(stored.read_text())
    obj["expires_at"] = int(time.time()) - 1  # the 24-hour window passed while the server was down
    stored.write_text(json.dumps(obj))
    stub.hold_after = None
    with start(tmp_path, stub) as served:
        client = sdk(served)
        batch = wait(client, created.id)
        assert batch.status == "expired" and batch.expired_at
        done, missing = results(client, batch.output_file_id), results(client, batch.error_file_id)
        assert len(done) == 10 and len(missing) == 20
        assert all(r["response"] is None and r["error"]["code"] == "batch_expired" for r in missing)
        assert stub.total == 10  # nothing was sent after the window
