"""Durable jobs: rows recorded as they finish, finished jobs that stay done, edited rows, one writer per
output, and write errors that stop the job. Engines: an in-process engine for the seam, the REMOTE engine
against the stub server (``tests/servers.py``) and the echo plugin through the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from infermux.configs import GenerationParams, ModelParams
from infermux.engines.base import InferenceEngine
from infermux.errors import RowError
from infermux.jobs import run_job_file
from infermux.jobs.lock import JobBusyError
from infermux.types import Conversation
from tests.conftest import ROOT, cli_env
from tests.servers import stub_server


def write_rows(path: Path, texts: list[str], ids: bool = False) -> Path:
    rows = []
    for i, text in enumerate(texts):
        row: dict[str, object] = {"messages": [{"role": "user", "content": text}]}
        if ids:
            row["conversation_id"] = f"c{i}"
        rows.append(json.dumps(row) + "\n")
    path.write_text("".join(rows))
    return path


def answers(path: Path) -> list[str]:
    return [json.loads(line)["messages"][-1]["content"] for line in path.read_text().splitlines()]


def partial_lines(out: Path) -> int:
    partial = out.with_name(out.name + ".partial.jsonl")
    return partial.read_bytes().count(b"\n") if partial.exists() else 0


# ---------------------------------------------------------------------------- the engine seam
class Staggered(InferenceEngine):
    """Answers the rows of a chunk one by one: each row waits until the job has recorded the one before."""

    engine_type = "STAGGERED"

    def setup(self) -> None:
        self.recorded = asyncio.Event()
        self.fail_after: int | None = None
        self.wait = True

    def chunk_size(self, generation: GenerationParams) -> int:
        return 16

    async def _infer_rows(
        self, conversations: list[Conversation], generation: GenerationParams
    ) -> AsyncIterator[tuple[int, Conversation | RowError]]:
        for i, conversation in enumerate(conversations):
            if i == self.fail_after:
                raise RuntimeError("the decoder stopped")
            self.recorded.clear()
            yield i, conversation.with_reply(f"answer {i}")
            if self.wait:  # the job saw row i before row i + 1 is decoded
                await asyncio.wait_for(self.recorded.wait(), 5)


def test_each_row_of_a_chunk_is_in_the_partial_file_before_the_next_one_is_answered(tmp_path: Path) -> None:
    src, out = write_rows(tmp_path / "in.jsonl", [f"q{i}" for i in range(5)]), tmp_path / "out.jsonl"
    engine = Staggered(ModelParams(model_name="s"))
    seen: list[int] = []

    def on_row(row: object, result: object) -> None:
        seen.append(partial_lines(out))
        engine.recorded.set()

    report = asyncio.run(run_job_file(engine, str(src), str(out), on_row=on_row, fingerprint="fp"))
    assert seen == [1, 2, 3, 4, 5]  # one chunk of five rows, recorded one at a time
    assert report.done == 5 and answers(out) == [f"answer {i}" for i in range(5)]


def test_a_chunk_that_fails_midway_keeps_the_rows_it_answered(tmp_path: Path) -> None:
    src, out = write_rows(tmp_path / "in.jsonl", [f"q{i}" for i in range(4)]), tmp_path / "out.jsonl"
    engine = Staggered(ModelParams(model_name="s"))
    engine.fail_after = 2

    def on_row(row: object, result: object) -> None:
        engine.recorded.set()

    report = asyncio.run(run_job_file(engine, str(src), str(out), on_row=on_row, fingerprint="fp"))
    assert report.done == 2 and report.failed == 2
    errors = [json.loads(line) for line in out.with_name("out.jsonl.errors.jsonl").read_text().splitlines()]
    assert [e["index"] for e in errors] == [2, 3] and "the decoder stopped" in errors[0]["message"]
    engine.wait = False
    convs = [Conversation.model_validate({"messages": [{"role": "user", "content": "x"}]})] * 3
    results = asyncio.run(engine.answer(convs, engine.generation_params))  # the collected form, same rows
    assert [isinstance(r, RowError) for r in results] == [False, False, True]


# ---------------------------------------------------------------------------- REMOTE against the stub server
def _cli(url: str, inp: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "infermux", "infer", "--engine", "REMOTE", "--model.model_name", "stub",
            "--remote_params.api_url", f"{url}/v1", "--remote_params.num_workers", "4",
            "--generation.max_new_tokens", "8", "--input_path", str(inp), "--output_path", str(out),
            "--log-level", "warning", *extra]  # fmt: skip


def _sent(url: str) -> list[str]:
    with urllib.request.urlopen(url + "/_stub/log") as resp:
        data: list[str] = json.loads(resp.read())
    return data


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT, env=cli_env(), **kwargs)  # type: ignore[call-overload, no-any-return]


def _wait_for_rows(proc: subprocess.Popen[bytes], out: Path, rows: int) -> None:
    deadline = time.monotonic() + 60
    while partial_lines(out) < rows:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.02)


@pytest.mark.slow
def test_a_finished_job_is_done_a_rerun_and_a_dry_run_send_nothing_and_an_edit_sends_one_row(tmp_path: Path) -> None:
    texts = [f"row {i}" for i in range(12)]
    inp, out = write_rows(tmp_path / "in.jsonl", texts), tmp_path / "out.jsonl"
    with stub_server() as url:
        first = _run(_cli(url, inp, out, "--no-cache"))
        assert first.returncode == 0, first.stderr
        assert answers(out) == [f"echo: {t}" for t in texts] and len(_sent(url)) == 12
        assert not out.with_name("out.jsonl.partial.jsonl").exists() and out.with_name("out.jsonl.done").exists()
        before = out.read_bytes()

        again = _run(_cli(url, inp, out, "--no-cache"))  # no answer cache: the job itself knows it is done
        assert again.returncode == 0, again.stderr
        assert "already finished" in again.stderr and "nothing was sent" in again.stderr
        dry = _run([*_cli(url, inp, out), "--dry-run"])
        assert dry.returncode == 0 and "already finished" in dry.stdout and "nothing to send" in dry.stdout
        assert len(_sent(url)) == 12 and out.read_bytes() == before

        texts[5] = "row 5, edited"
        write_rows(inp, texts)
        dry = _run([*_cli(url, inp, out, "--no-cache"), "--dry-run"])
        assert "11 already done" in dry.stdout and "1 to send" in dry.stdout, dry.stdout
        edited = _run(_cli(url, inp, out, "--no-cache"))
        assert edited.returncode == 0, edited.stderr
        assert _sent(url)[12:] == ["row 5, edited"]  # the one changed row, nothing else
        assert answers(out) == [f"echo: {t}" for t in texts]


def test_an_edited_row_with_a_conversation_id_is_answered_again_on_resume(tmp_path: Path) -> None:
    sent = tmp_path / "sent.log"
    texts = ["first", "second", "third", "FAIL me"]
    inp, out = write_rows(tmp_path / "in.jsonl", texts, ids=True), tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "infermux", "infer", "--engine", "ECHO", "--model.model_name", "echo",
           "--input_path", str(inp), "--output_path", str(out), "--no-cache"]  # fmt: skip
    env = cli_env(ECHO_LOG=str(sent))
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 3, first.stderr  # one row failed: the job stays resumable

    write_rows(inp, ["first", "second, edited", "third", "fixed"], ids=True)  # same conversation_ids
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert sent.read_text().splitlines()[4:] == ["second, edited", "fixed"]
    assert answers(out) == ["echo: first", "echo: second, edited", "echo: third", "echo: fixed"]
    assert "1 rows changed since they were answered (c1)" in rerun.stderr
    assert "1 answered again because their row changed" in rerun.stderr
    stale = out.with_name("out.jsonl.stale.jsonl").read_text()
    assert '"echo: second"' in stale  # the earlier answer is kept aside, not lost


@pytest.mark.slow
def test_after_kill_9_and_resume_every_recorded_row_is_in_the_cache_and_a_rerun_sends_nothing(tmp_path: Path) -> None:
    texts = [f"row {i}" for i in range(80)]
    inp, out = write_rows(tmp_path / "in.jsonl", texts), tmp_path / "out.jsonl"
    with stub_server("--latency-ms", "100") as url:
        proc = subprocess.Popen(_cli(url, inp, out), env=cli_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)  # fmt: skip
        _wait_for_rows(proc, out, 20)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        recorded = partial_lines(out)
        resumed = _run(_cli(url, inp, out))
        assert resumed.returncode == 0, resumed.stderr
        sent = len(_sent(url))
        finished = _run(_cli(url, inp, out))
        assert finished.returncode == 0 and "already finished" in finished.stderr, finished.stderr
        elsewhere = _run(_cli(url, inp, tmp_path / "copy.jsonl"))  # a new output: every row from the cache
        assert elsewhere.returncode == 0, elsewhere.stderr
        assert len(_sent(url)) == sent, f"rows resent after the resume ({recorded} were recorded at the kill)"
    assert "80 of them from the answer cache" in elsewhere.stderr
    assert answers(tmp_path / "copy.jsonl") == answers(out) == [f"echo: {t}" for t in texts]


# ---------------------------------------------------------------------------- one writer per output
@pytest.mark.slow
def test_a_second_run_on_the_same_output_is_refused_naming_the_first_and_a_killed_run_leaves_no_lock(
    tmp_path: Path,
) -> None:
    texts = [f"row {i}" for i in range(60)]
    inp, out = write_rows(tmp_path / "in.jsonl", texts), tmp_path / "out.jsonl"
    with stub_server("--latency-ms", "150") as url:
        first = subprocess.Popen(_cli(url, inp, out, "--no-cache"), env=cli_env(), cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        _wait_for_rows(first, out, 5)
        second = _run(_cli(url, inp, out, "--no-cache"))
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"another infermux run (PID {first.pid}) is writing this job's output now" in second.stderr
        dry = _run([*_cli(url, inp, out), "--dry-run"])
        assert dry.returncode == 0 and f"a run (PID {first.pid}) is writing this output now" in dry.stdout
        first.send_signal(signal.SIGKILL)
        first.wait()
        dry = _run([*_cli(url, inp, out), "--dry-run"])
        assert "is writing this output" not in dry.stdout  # the lock file it left is not held by anyone
        third = _run(_cli(url, inp, out, "--no-cache"))  # the kernel released the dead run's lock
        assert third.returncode == 0, third.stderr
        sent = _sent(url)
    assert answers(out) == [f"echo: {t}" for t in texts]
    assert len(sent) < 60 + 8  # the refused run sent nothing (the killed one had at most 4 rows in flight)
    assert not out.with_name("out.jsonl.lock").exists()


def _hold_lock(lock: Path) -> subprocess.Popen[str]:
    """Another process holding the job lock at ``lock``, as a running job does."""
    code = (
        "import sys, time; from pathlib import Path; from infermux.jobs.lock import job_lock\n"
        "with job_lock(Path(sys.argv[1]), 'out'):\n    print('held', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True, env=cli_env())
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_batch_fetch_and_ray_jobs_take_the_same_lock(tmp_path: Path) -> None:
    from infermux.configs import InferenceConfig, RemoteParams
    from infermux.configs.distributed_params import DistributedParams
    from infermux.distributed.driver import run_on_ray
    from infermux.engines.remote.openai.openai import OpenAIInferenceEngine
    from infermux.jobs import provider_batch
    from tests.fakes import FakeOpenAIBatch

    inp, out = write_rows(tmp_path / "in.jsonl", ["a", "b"]), tmp_path / "out.jsonl"
    with FakeOpenAIBatch(api_key="sk-test") as fake:
        engine = OpenAIInferenceEngine(
            ModelParams(model_name="gpt-4o-mini"),
            remote_params=RemoteParams(api_url=fake.url + "/v1", api_key="sk-test", retry_backoff_base=0.01),
        )
        provider_batch.submit(engine, str(inp), str(out))
        holder = _hold_lock(tmp_path / "out.jsonl.lock")
        try:
            with pytest.raises(JobBusyError, match=f"PID {holder.pid}"):
                provider_batch.fetch(engine, str(inp), str(out))
        finally:
            holder.kill()
            holder.wait()
    holder = _hold_lock(tmp_path / "out.jsonl.lock")
    try:
        cfg = InferenceConfig(model=ModelParams(model_name="echo"), engine="ECHO", input_path=str(inp),
                              output_path=str(out), distributed=DistributedParams())  # fmt: skip
        with pytest.raises(JobBusyError, match=f"PID {holder.pid}"):
            run_on_ray(cfg)
    finally:
        holder.kill()
        holder.wait()
    assert not out.exists() and not out.with_name("out.jsonl.partial.jsonl").exists()


# ---------------------------------------------------------------------------- write errors
def _file_size_limit(limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.slow
def test_a_file_that_cannot_grow_stops_the_job_cleanly_and_a_rerun_finishes_it(tmp_path: Path) -> None:
    texts = [f"row {i}" for i in range(200)]
    inp, out = write_rows(tmp_path / "in.jsonl", texts), tmp_path / "out.jsonl"
    with stub_server("--latency-ms", "20") as url:
        cmd = _cli(url, inp, out, "--no-cache")
        stopped = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, env=cli_env(),
                                 preexec_fn=lambda: _file_size_limit(8000))  # fmt: skip
        assert stopped.returncode == 2 and "Traceback" not in stopped.stderr, stopped.stderr
        assert "cannot write the job's files (the file cannot grow any larger" in stopped.stderr
        assert "rerun the same command to finish the job" in stopped.stderr
        recorded = partial_lines(out)
        sent_first = len(_sent(url))
        assert 10 < recorded < 200 and sent_first <= recorded + 1 + 4 * 2  # stopped at the first failed write
        rerun = _run(cmd)
        assert rerun.returncode == 0, rerun.stderr
        assert len(_sent(url)) - sent_first == 200 - recorded  # nothing recorded was lost or sent again
    assert answers(out) == [f"echo: {t}" for t in texts]
    assert os.path.getsize(out) > 8000


# ---------------------------------------------------------------------------- in memory, with an output file
def test_in_memory_infer_with_an_output_returns_every_row_when_rerun_and_sends_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infermux.configs import InferenceConfig
    from infermux.engines.registry import build_engine

    sent = tmp_path / "sent.log"
    monkeypatch.setenv("ECHO_LOG", str(sent))
    out = tmp_path / "out.jsonl"
    config = InferenceConfig(model=ModelParams(model_name="echo"), engine="ECHO", output_path=str(out))
    engine = build_engine(config)
    convs = [Conversation.model_validate({"messages": [{"role": "user", "content": t}]}) for t in ("a", "FAIL b", "c")]
    first = engine.infer(convs, config)
    assert [c.last_message.text for c in first] == ["echo: a", "FAIL b", "echo: c"]
    convs[1] = Conversation.model_validate({"messages": [{"role": "user", "content": "b"}]})
    second = engine.infer(convs, config)  # resumes: a and c come from the partial file
    assert [c.last_message.text for c in second] == ["echo: a", "echo: b", "echo: c"]
    third = engine.infer(convs, config)  # finished: every row from the output, none sent
    assert [c.last_message.text for c in third] == ["echo: a", "echo: b", "echo: c"]
    assert engine.last_report is not None and engine.last_report.already_finished
    assert sent.read_text().splitlines() == ["a", "FAIL b", "c", "b"]


def test_an_edit_of_keys_infermux_does_not_know_reaches_the_output_without_a_request(tmp_path: Path) -> None:
    """Unknown keys and metadata do not decide the answer (the answer cache ignores them) but are the
    user's data: a rerun after editing them writes the edited row, answered from the cache, sending nothing."""
    sent, inp, out = tmp_path / "sent.log", tmp_path / "in.jsonl", tmp_path / "out.jsonl"

    def write(source: str, note: str) -> None:
        rows = [{"conversation_id": f"c{i}", "source": source if i == 0 else "x", "metadata": {"n": i},
                 "messages": [{"role": "user", "content": f"q{i}", "note": note}]} for i in range(3)]  # fmt: skip
        inp.write_text("".join(json.dumps(r) + "\n" for r in rows))

    cmd = [sys.executable, "-m", "infermux", "infer", "--engine", "ECHO", "--model.model_name", "echo",
           "--input_path", str(inp), "--output_path", str(out), "--cache_path", str(tmp_path / "cache.sqlite")]  # fmt: skip
    env = cli_env(ECHO_LOG=str(sent))
    write("wiki", "first")
    assert subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120).returncode == 0
    assert len(sent.read_text().splitlines()) == 3
    write("wiki2", "edited")
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["source"] for r in rows] == ["wiki2", "x", "x"]
    assert all(r["messages"][0]["note"] == "edited" for r in rows)
    assert [r["metadata"]["n"] for r in rows] == [0, 1, 2]
    assert len(sent.read_text().splitlines()) == 3  # every edited row came from the answer cache


def test_a_dry_run_with_default_tools_plans_the_job_that_runs(tmp_path: Path) -> None:
    """`--tools` counts for the job's fingerprint: the dry run of a finished job run with them says it is
    finished (it planned another job, every row to send, before)."""
    inp, out = write_rows(tmp_path / "in.jsonl", ["a", "b"]), tmp_path / "out.jsonl"
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([{"type": "function", "function": {"name": "f", "description": "d",
                                                                   "parameters": {"type": "object"}}}]))  # fmt: skip
    with stub_server() as url:
        cmd = [*_cli(url, inp, out, "--no-cache"), "--tools", str(tools)]
        first = _run(cmd)
        assert first.returncode == 0, first.stderr
        dry = _run([*cmd, "--dry-run"])
        assert dry.returncode == 0 and "already finished" in dry.stdout, dry.stdout + dry.stderr
        plain = _run([*_cli(url, inp, out, "--no-cache"), "--dry-run"])  # without the tools: another job
        assert "already finished" not in plain.stdout and "2 to send" in plain.stdout, plain.stdout
