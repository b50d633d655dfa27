"""Parquet and Arrow-dataset inputs, column mapping and Parquet output, against a counting OpenAI-compatible
server on 127.0.0.1 (real pyarrow-written files, the REMOTE engine, the CLI and the jobs facade)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from infermux.configs import InferenceConfig  # noqa: E402
from infermux.jobs import run_config_job  # noqa: E402
from tests.conftest import ROOT, cli_env, run_cli  # noqa: E402
from tests.fakes.counting import CountingChat  # noqa: E402


@pytest.fixture
def server() -> Iterator[CountingChat]:
    with CountingChat() as fake:
        assert isinstance(fake, CountingChat)
        yield fake


def _config(server: CountingChat, **extra: Any) -> InferenceConfig:
    remote = {"api_url": server.url + "/v1", "api_key": "sk-test-0000", "num_workers": 4}
    data = {"model": {"model_name": "stub-model"}, "engine": "REMOTE", "generation": {"max_new_tokens": 8},
            "remote_params": remote, **extra}  # fmt: skip
    return InferenceConfig.model_validate(data)


def _config_file(tmp_path: Path, server: CountingChat, **extra: Any) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(_config(server, **extra).model_dump_json(exclude_none=True))
    return path


def _run(config: InferenceConfig) -> Any:
    return asyncio.run(run_config_job(config))


def _messages_rows(count: int) -> list[dict[str, Any]]:
    return [{"messages": [{"role": "user", "content": f"prompt number {i}"}], "n": i} for i in range(count)]


def _answers(path: Path) -> list[str]:
    if path.suffix == ".parquet":
        return list(pq.read_table(path).column("answer").to_pylist())
    return [json.loads(line)["messages"][-1]["content"] for line in path.read_text().splitlines()]


def test_parquet_job_answers_like_the_same_rows_in_jsonl(tmp_path: Path, server: CountingChat) -> None:
    rows = _messages_rows(10_000)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet", row_group_size=1_500)
    assert pq.ParquetFile(tmp_path / "in.parquet").num_row_groups == 7  # read one row group at a time
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _run(_config(server, input_path=str(tmp_path / "in.jsonl"), output_path=str(tmp_path / "out.jsonl"), cache=False))
    report = _run(
        _config(server, input_path=str(tmp_path / "in.parquet"), output_path=str(tmp_path / "out.parquet"), cache=False)
    )
    assert report.done == 10_000 and report.failed == 0
    expected = [f"echo prompt number {i}" for i in range(10_000)]
    assert _answers(tmp_path / "out.jsonl") == expected
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column("answer").to_pylist() == expected
    assert out.column("n").to_pylist() == list(range(10_000))  # input columns carried, in input order
    assert out.column("finish_reason").to_pylist()[:2] == ["stop", "stop"]
    assert set(out.column("error").to_pylist()) == {None}
    assert all(t > 0 for t in out.column("completion_tokens").to_pylist())
    assert not (tmp_path / "out.parquet.partial.jsonl").exists()  # complete: the state files are gone


def test_prompt_column_table_keeps_its_other_columns(tmp_path: Path, server: CountingChat) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()
    for part in range(3):  # a folder of parts, read in name order
        rows = [{"key": f"k{part}-{i}", "question": f"q {part}.{i}", "score": part * 10 + i, "tags": [str(i)],
                 "sys": "be brief" if i % 2 else None} for i in range(4)]  # fmt: skip
        pq.write_table(pa.Table.from_pylist(rows), folder / f"part-{part:03d}.parquet", row_group_size=3)
    (folder / "_SUCCESS").write_text("")  # marker files of Spark and friends are skipped
    config = _config(server, input_path=str(folder), output_path=str(tmp_path / "out.parquet"),
                     prompt_column="question", system_column="sys", id_column="key")  # fmt: skip
    assert _run(config).done == 12
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column_names[:5] == ["key", "question", "score", "tags", "sys"]
    assert out.schema.field("score").type == pa.int64() and out.schema.field("tags").type == pa.list_(pa.string())
    assert out.column("key").to_pylist()[:5] == ["k0-0", "k0-1", "k0-2", "k0-3", "k1-0"]
    assert out.column("answer").to_pylist()[1] == "echo q 0.1"
    systems = [s.text for s in server.seen]
    assert len(systems) == 12
    bodies = [json.loads(r.body) for r in server.requests]
    with_system = [b for b in bodies if b["messages"][0]["role"] == "system"]
    assert len(with_system) == 6 and all(b["messages"][0]["content"] == "be brief" for b in with_system)
    # JSONL output: the other columns travel in metadata; the id column is the conversation id
    config = config.model_copy(update={"output_path": str(tmp_path / "out.jsonl")})
    assert _run(config).done == 12
    first = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])
    assert first["conversation_id"] == "k0-0"
    assert first["metadata"]["score"] == 0 and first["metadata"]["tags"] == ["0"]
    assert "question" not in first["metadata"] and "key" not in first["metadata"]


def _save_to_disk(folder: Path, rows: list[dict[str, Any]], batch: int) -> None:
    """The layout ``datasets.Dataset.save_to_disk`` writes: Arrow stream files listed in state.json."""
    folder.mkdir()
    table = pa.Table.from_pylist(rows)
    names = []
    for number, start in enumerate(range(0, len(rows), batch * 2)):
        name = f"data-{number:05d}-of-XXXXX.arrow"
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            for piece in table.slice(start, batch * 2).to_batches(max_chunksize=batch):
                writer.write_batch(piece)
        names.append(name)
    state = {"_data_files": [{"filename": n} for n in names], "_fingerprint": "x", "_split": None}
    (folder / "state.json").write_text(json.dumps(state))
    (folder / "dataset_info.json").write_text(json.dumps({"features": {}}))


def test_dataset_folder_round_trips(tmp_path: Path, server: CountingChat) -> None:
    rows = [{"text": f"line {i}", "label": i % 3} for i in range(25)]
    _save_to_disk(tmp_path / "ds", rows, batch=4)
    config = _config(server, input_path=str(tmp_path / "ds"), output_path=str(tmp_path / "out.parquet"),
                     prompt_column="text")  # fmt: skip
    assert _run(config).done == 25
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.select(["text", "label"]).to_pylist() == rows
    assert out.column("answer").to_pylist() == [f"echo line {i}" for i in range(25)]


def test_messages_as_json_text_and_the_answer_cache(tmp_path: Path, server: CountingChat) -> None:
    rows = [{"messages": json.dumps([{"role": "user", "content": f"json {i}"}])} for i in range(6)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    config = _config(server, input_path=str(tmp_path / "in.parquet"), output_path=str(tmp_path / "a.parquet"))
    assert _run(config).done == 6 and len(server.seen) == 6
    again = _run(config.model_copy(update={"output_path": str(tmp_path / "b.parquet")}))
    assert again.cached == 6 and len(server.seen) == 6  # greedy: answered from the cache, nothing sent
    assert _answers(tmp_path / "b.parquet") == [f"echo json {i}" for i in range(6)]


def test_failed_rows_keep_their_error_in_the_parquet_output(tmp_path: Path, server: CountingChat) -> None:
    pq.write_table(pa.Table.from_pylist([{"p": f"x{i}"} for i in range(5)]), tmp_path / "in.parquet")
    server.fail_next(400, "this request is bad")
    config = _config(server, input_path=str(tmp_path / "in.parquet"), output_path=str(tmp_path / "out.parquet"),
                     prompt_column="p")  # fmt: skip
    report = _run(config)
    assert report.failed == 1 and report.done == 4
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert len(out) == 5 and [r["p"] for r in out] == [f"x{i}" for i in range(5)]
    failed = [r for r in out if r["error"] is not None]
    assert len(failed) == 1 and failed[0]["answer"] is None
    assert "this request is bad" in json.loads(failed[0]["error"])["message"]
    assert (tmp_path / "out.parquet.errors.jsonl").exists()
    rerun = _run(config)  # the failed row runs again; the others are resumed
    assert rerun.resumed == 4 and rerun.done == 1
    assert set(pq.read_table(tmp_path / "out.parquet").column("error").to_pylist()) == {None}


def test_killed_parquet_job_answers_each_row_once_when_rerun(tmp_path: Path) -> None:
    rows = [{"id": f"r{i}", "prompt": f"slow {i}"} for i in range(60)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet", row_group_size=16)
    out = tmp_path / "out.parquet"
    with CountingChat(latency_s=0.05) as fake:
        assert isinstance(fake, CountingChat)
        job = _config_file(tmp_path, fake)
        args = [sys.executable, "-m", "infermux", "infer", "-c", str(job), "--input_path", str(tmp_path / "in.parquet"),
                "--output_path", str(out), "--prompt_column", "prompt", "--id_column", "id"]  # fmt: skip
        proc = subprocess.Popen(args, env=cli_env(), cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        partial = tmp_path / "out.parquet.partial.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not partial.exists() or partial.read_bytes().count(b"\n") < 10):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not out.exists()
        first = len(fake.seen)
        assert 10 <= first < 60
        done = partial.read_bytes().count(b"\n")
        finished = run_cli(*args[3:])
        assert finished.returncode == 0, finished.stderr
        texts = [s.text for s in fake.seen]
        answered_twice = len(texts) - len(set(texts))
        assert answered_twice <= first - done  # only rows in flight at the kill were sent again
        assert set(texts) == {f"slow {i}" for i in range(60)}
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == [f"r{i}" for i in range(60)]
    assert table.column("answer").to_pylist() == [f"echo slow {i}" for i in range(60)]


def test_bad_tables_name_file_row_group_row_and_column(tmp_path: Path, server: CountingChat) -> None:
    rows = [{"prompt": f"p{i}", "other": i} for i in range(10)]
    rows[7]["prompt"] = None
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet", row_group_size=4)
    job = _config_file(tmp_path, server)
    base = ("infer", "-c", str(job), "--input_path", str(tmp_path / "in.parquet"), "--output_path",
            str(tmp_path / "out.jsonl"))  # fmt: skip
    proc = run_cli(*base, "--prompt_column", "prompt")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "in.parquet (row group 1, row 3)" in proc.stderr
    assert "column 'prompt' (--prompt_column) is empty" in proc.stderr
    missing = run_cli(*base)
    assert missing.returncode == 2
    assert "no 'messages' column" in missing.stderr and "--prompt_column" in missing.stderr
    assert "columns: prompt, other" in missing.stderr
    alone = run_cli(*base, "--system_column", "other")
    assert alone.returncode == 2 and "go with --prompt_column" in alone.stderr
    wrong = run_cli(*base, "--prompt_column", "question")
    assert wrong.returncode == 2 and "no column 'question' for --prompt_column" in wrong.stderr
    bad_messages = [{"messages": [{"role": "robot", "content": "hi"}]}]
    pq.write_table(pa.Table.from_pylist(bad_messages), tmp_path / "m.parquet")
    proc = run_cli("infer", "-c", str(job), "--input_path", str(tmp_path / "m.parquet"))
    assert proc.returncode == 2 and "m.parquet (row group 0, row 0)" in proc.stderr
    assert "unknown role 'robot'" in proc.stderr
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    junk = run_cli("infer", "-c", str(job), "--input_path", str(tmp_path / "junk.parquet"))
    assert junk.returncode == 2 and "not readable as a Parquet file" in junk.stderr and "Traceback" not in junk.stderr
    assert len(server.seen) == 0  # nothing ran


def test_output_column_clash_and_mapping_on_jsonl_are_refused(tmp_path: Path, server: CountingChat) -> None:
    pq.write_table(pa.Table.from_pylist([{"prompt": "a", "answer": "gold"}]), tmp_path / "in.parquet")
    job = _config_file(tmp_path, server)
    proc = run_cli("infer", "-c", str(job), "--input_path", str(tmp_path / "in.parquet"), "--prompt_column", "prompt",
                   "--output_path", str(tmp_path / "out.parquet"))  # fmt: skip
    assert proc.returncode == 2 and "already has column(s) answer" in proc.stderr
    (tmp_path / "in.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    proc = run_cli("infer", "-c", str(job), "--input_path", str(tmp_path / "in.jsonl"), "--prompt_column", "p")
    assert proc.returncode == 2 and "apply to tables" in proc.stderr
    assert len(server.seen) == 0


def test_dry_run_counts_table_rows_and_jsonl_input_gives_a_parquet_output(tmp_path: Path, server: CountingChat) -> None:
    pq.write_table(pa.Table.from_pylist([{"p": f"dry {i}"} for i in range(7)]), tmp_path / "in.parquet")
    job = _config_file(tmp_path, server)
    proc = run_cli("infer", "-c", str(job), "--input_path", str(tmp_path / "in.parquet"), "--prompt_column", "p",
                   "--dry-run")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "rows: 7 (0 already done, 0 in the answer cache, 7 to send)" in proc.stdout
    assert len(server.seen) == 0
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _messages_rows(3)))
    config = _config(server, input_path=str(tmp_path / "in.jsonl"), output_path=str(tmp_path / "out.pq"),
                     output_format="parquet")  # fmt: skip
    assert _run(config).done == 3
    out = pq.read_table(tmp_path / "out.pq").to_pylist()
    assert [r["answer"] for r in out] == [f"echo prompt number {i}" for i in range(3)]
    assert json.loads(out[0]["conversation"])["messages"] == [{"role": "user", "content": "prompt number 0"}]


def test_jsonl_input_is_not_a_table(tmp_path: Path) -> None:
    """A JSONL job never imports pyarrow (it stays as fast as before)."""
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _messages_rows(2)))
    code = (
        "import sys; from infermux.jobs.rows import validate_file; "
        f"assert len(validate_file({str(tmp_path / 'in.jsonl')!r})) == 2; "
        "assert not any(m.startswith('pyarrow') for m in sys.modules), 'pyarrow imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env())
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_parquet_parts_under_an_s3_prefix_in_and_a_parquet_object_out(
    tmp_path: Path, server: CountingChat, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("moto")
    from tests.servers import s3_server

    with s3_server() as s3:
        for name, value in s3.env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(tmp_path)
        for part in range(2):
            sink = pa.BufferOutputStream()
            rows = [{"p": f"s3 {part}.{i}", "i": part * 5 + i} for i in range(5)]
            pq.write_table(pa.Table.from_pylist(rows), sink, row_group_size=2)
            s3.put(f"in/parts/part-{part}.parquet", sink.getvalue().to_pybytes())
        config = _config(server, input_path="s3://jobs/in/parts", input_format="parquet", prompt_column="p",
                         output_path="s3://jobs/out/answers.parquet")  # fmt: skip
        report = _run(config)
        assert report.done == 10 and report.output_path == "s3://jobs/out/answers.parquet"
        data = s3.get("out/answers.parquet")
        assert data is not None
        out = pq.read_table(pa.BufferReader(data))
        assert out.column("i").to_pylist() == list(range(10))
        assert out.column("answer").to_pylist() == [f"echo s3 {p}.{i}" for p in range(2) for i in range(5)]
        assert not (tmp_path / "infermux-jobs").exists()


def test_a_large_row_group_is_read_in_pieces_and_rows_keep_their_numbers(tmp_path: Path) -> None:
    from infermux.errors import InputError
    from infermux.jobs.api import prepare_input
    from infermux.jobs.tables import TableColumns, table_batches

    prompts: list[str | None] = [f"p{i}" for i in range(25_000)]
    prompts[12_345] = None
    pq.write_table(pa.table({"p": prompts}), tmp_path / "in.parquet", row_group_size=25_000)
    pieces = [
        (group, start, batch.num_rows) for _, group, start, batch in table_batches(tmp_path / "in.parquet", "parquet")
    ]
    assert pieces == [("row group 0", 0, 10_000), ("row group 0", 10_000, 10_000), ("row group 0", 20_000, 5_000)]
    with pytest.raises(InputError, match=r"in\.parquet \(row group 0, row 12345\): column 'p'"):
        prepare_input(str(tmp_path / "in.parquet"), columns=TableColumns(prompt_column="p"))


def test_a_dataset_folder_output_reads_back_as_input_and_resumes(tmp_path: Path, server: CountingChat) -> None:
    rows = [{"text": f"line {i}", "label": i % 3} for i in range(25)]
    _save_to_disk(tmp_path / "ds", rows, batch=4)
    out = tmp_path / "answers"
    config = _config(server, input_path=str(tmp_path / "ds"), output_path=str(out), output_format="dataset",
                     prompt_column="text", cache=False)  # fmt: skip
    server.fail_next(400, "this request is bad")
    first = _run(config)
    assert (first.done, first.failed) == (24, 1)
    state = json.loads((out / "state.json").read_text())
    assert [f["filename"] for f in state["_data_files"]] == ["data-00000-of-00001.arrow"]
    assert json.loads((out / "dataset_info.json").read_text())["features"] is None
    with pa.memory_map(str(out / "data-00000-of-00001.arrow")) as source:  # save_to_disk's Arrow stream format
        table = pa.ipc.open_stream(source).read_all()
    assert table.column_names == ["text", "label", "answer", "finish_reason", "prompt_tokens", "completion_tokens",
                                  "cost_usd", "error"]  # fmt: skip
    assert sum(e is not None for e in table.column("error").to_pylist()) == 1
    rerun = _run(config)  # the failed row again, the others resumed; the folder is replaced whole
    assert (rerun.resumed, rerun.done, rerun.failed) == (24, 1, 0) and len(
        server.seen
    ) == 25  # (the 400 is not counted)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers", "answers.done", "ds"]
    assert not list(tmp_path.glob(".answers*"))  # no temporary or old folder left behind
    # ... and the output folder is a table input again, its columns kept (round trip: in -> out -> in)
    back = _config(server, input_path=str(out), output_path=str(tmp_path / "again.jsonl"), prompt_column="answer")
    assert _run(back).done == 25
    again = [json.loads(line) for line in (tmp_path / "again.jsonl").read_text().splitlines()]
    assert again[3]["messages"][0]["content"] == "echo line 3" and again[3]["metadata"]["label"] == 0
    assert again[3]["messages"][-1]["content"] == "echo echo line 3"
    datasets = pytest.importorskip("datasets")  # where Hugging Face datasets is installed, it reads the folder
    loaded = datasets.load_from_disk(str(out))
    assert loaded.num_rows == 25 and loaded[3]["answer"] == "echo line 3" and loaded[3]["label"] == 0


def test_a_finished_parquet_job_with_an_edited_row_reruns(tmp_path: Path, server: CountingChat) -> None:
    rows = [{"p": f"x{i}"} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    config = _config(server, input_path=str(tmp_path / "in.parquet"), output_path=str(tmp_path / "out.parquet"),
                     prompt_column="p", cache_path=str(tmp_path / "cache.sqlite"))  # fmt: skip
    assert _run(config).done == 5
    assert _run(config).already_finished and len(server.seen) == 5  # nothing changed: nothing sent
    rows[2]["p"] = "edited"
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    again = _run(config)  # the output holds answers, not records: rows come back from the answer cache
    assert again.failed == 0 and len(server.seen) == 6 and [s.text for s in server.seen][-1] == "edited"
    assert _answers(tmp_path / "out.parquet") == ["echo x0", "echo x1", "echo edited", "echo x3", "echo x4"]
