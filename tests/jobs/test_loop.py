"""The durable batch loop, driven through the echo test engine (tests/plugin_site)."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from infermux_echo import EchoEngine

from infermux.configs import GenerationParams, InferenceConfig, ModelParams
from infermux.jobs.loop import JobFiles
from infermux.types import Conversation
from tests.conftest import ROOT, cli_env


def write_input(path: Path, texts: list[str], ids: bool = False) -> Path:
    with path.open("w") as fh:
        for i, text in enumerate(texts):
            row: dict = {"messages": [{"role": "user", "content": text}]}
            if ids:
                row["conversation_id"] = f"c{i}"
            fh.write(json.dumps(row) + "\n")
    return path


def read_answers(path: Path) -> list[str]:
    return [json.loads(line)["messages"][-1]["content"] for line in path.read_text().splitlines()]


def engine(concurrency: int = 1, batch_size: int = 1) -> EchoEngine:
    return EchoEngine(
        ModelParams(model_name="echo", model_kwargs={"concurrency": concurrency}),
        generation_params=GenerationParams(batch_size=batch_size),
    )


def test_in_memory_infer_keeps_order_and_reports_failures_as_data():
    eng = engine(concurrency=4, batch_size=3)
    convs = [
        Conversation.model_validate({"messages": [{"role": "user", "content": t}]})
        for t in ["a", "b", "FAIL", "c", "d"]
    ]
    out = eng.infer(convs)
    assert [c.last_message.text for c in out] == ["echo: a", "echo: b", "FAIL", "echo: c", "echo: d"]
    assert out[2].metadata["error"]["kind"] == "test_failure"
    assert eng.last_report is not None and eng.last_report.failed == 1 and eng.last_report.done == 4


def test_file_job_writes_in_input_order_with_concurrency(tmp_path):
    src = write_input(tmp_path / "in.jsonl", [f"q{i}" for i in range(50)])
    out = tmp_path / "out.jsonl"
    report = asyncio.run(engine(concurrency=8, batch_size=3).run_file(str(src), str(out)))
    assert report.ok and report.done == 50 and report.completion_tokens == 100
    assert read_answers(out) == [f"echo: q{i}" for i in range(50)]
    assert not (tmp_path / "out.jsonl.partial.jsonl").exists()
    assert not (tmp_path / "out.jsonl.errors.jsonl").exists()


def test_failed_rows_go_to_errors_file_and_rerun_retries_only_them(tmp_path, monkeypatch):
    src = write_input(tmp_path / "in.jsonl", ["a", "FAIL-1", "b"], ids=True)
    out = tmp_path / "out.jsonl"
    log = tmp_path / "calls.log"
    monkeypatch.setenv("ECHO_LOG", str(log))
    report = asyncio.run(engine().run_file(str(src), str(out)))
    assert report.failed == 1 and report.done == 2
    errors = [json.loads(x) for x in (tmp_path / "out.jsonl.errors.jsonl").read_text().splitlines()]
    assert errors == [
        {"id": "c1", "index": 1, "line": 2, "fp": errors[0]["fp"], "kind": "test_failure",
         "message": "asked to fail: FAIL-1", "status": None, "retryable": False}
    ]  # fmt: skip
    assert read_answers(out) == ["echo: a", "echo: b"]
    # Fix the bad row and rerun: only it runs.
    write_input(src, ["a", "fixed", "b"], ids=True)
    log.write_text("")
    report = asyncio.run(engine().run_file(str(src), str(out)))
    assert report.ok and report.resumed == 2 and report.done == 1
    assert log.read_text().split() == ["fixed"]
    assert read_answers(out) == ["echo: a", "echo: fixed", "echo: b"]


def test_resume_skips_done_rows_only_for_same_fingerprint_and_drops_torn_line(tmp_path, monkeypatch):
    src = write_input(tmp_path / "in.jsonl", ["a", "b", "c"])
    out = tmp_path / "out.jsonl"
    eng = engine()
    fp = eng._fingerprint(eng.generation_params)
    files = JobFiles(out, fp)
    files.open()
    from infermux.jobs.rows import iter_rows

    rows = list(iter_rows(src))
    files.append_done(rows[0], rows[0].conversation.with_reply("from before"))
    files.close()
    with files.partial.open("ab") as fh:  # a stale row from another config and a torn write
        fh.write(json.dumps({"id": rows[1].row_id, "fp": "other", "conversation": {}}).encode() + b"\n")
        fh.write(b'{"id": "' + rows[2].row_id.encode() + b'", "fp": "' + fp.encode() + b'", "conv')
    log = tmp_path / "calls.log"
    monkeypatch.setenv("ECHO_LOG", str(log))
    report = asyncio.run(engine().run_file(str(src), str(out)))
    assert report.resumed == 1 and report.done == 2
    assert log.read_text().split() == ["b", "c"]
    assert read_answers(out) == ["from before", "echo: b", "echo: c"]
    # The other config's answer is not reused, and not lost either.
    (stale,) = [json.loads(line) for line in (tmp_path / "out.jsonl.stale.jsonl").read_text().splitlines()]
    assert stale == {"id": rows[1].row_id, "fp": "other", "conversation": {}}


def test_a_dry_run_leaves_the_partial_file_as_it_is(tmp_path):
    from infermux.jobs.plan import plan_job

    src = write_input(tmp_path / "in.jsonl", ["a", "b"])
    out = tmp_path / "out.jsonl"
    partial = tmp_path / "out.jsonl.partial.jsonl"
    from infermux.jobs.rows import iter_rows

    rows = list(iter_rows(src))
    before = (  # a row answered under another config, then a torn line
        json.dumps({"id": rows[0].row_id, "fp": "other", "conversation": {}}).encode() + b"\n" + b'{"id": "x", "fp'
    )
    partial.write_bytes(before)
    config = InferenceConfig(engine="ECHO", model=ModelParams(model_name="echo"), input_path=str(src),
                             output_path=str(out))  # fmt: skip
    plan = plan_job(config)
    assert plan.already_done == 0 and plan.to_send == 2
    assert partial.read_bytes() == before and not (tmp_path / "out.jsonl.stale.jsonl").exists()


def test_rows_with_images_fail_cleanly_on_text_only_engine(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(
        json.dumps({"messages": [{"role": "user", "content": "plain"}]})
        + "\n"
        + json.dumps({"messages": [{"role": "user", "content": [{"type": "image_url", "content": "http://x/y.png"}]}]})
        + "\n"
    )
    out = tmp_path / "out.jsonl"
    report = asyncio.run(engine().run_file(str(src), str(out)))
    assert report.failed == 1
    assert "does not accept images" in (tmp_path / "out.jsonl.errors.jsonl").read_text()


@pytest.mark.parametrize("kill_after", [0.3, 0.9, 1.6])
def test_kill_9_then_rerun_equals_uninterrupted_run(tmp_path, kill_after):
    texts = [f"row {i} " + "x" * (i % 7) for i in range(120)]
    src = write_input(tmp_path / "in.jsonl", texts)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("engine: ECHO\nmodel:\n  model_name: echo\n  model_kwargs: {concurrency: 4}\n")
    out = tmp_path / "out.jsonl"
    args = [
        sys.executable,
        "-m",
        "infermux",
        "infer",
        "-c",
        str(cfg),
        "--input_path",
        str(src),
        "--output_path",
        str(out),
    ]
    env = cli_env(ECHO_DELAY="0.05")
    proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(kill_after)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists() or read_answers(out) == [f"echo: {t}" for t in texts]
    done = subprocess.run(args, env=cli_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert read_answers(out) == [f"echo: {t}" for t in texts]
    assert not out.with_name("out.jsonl.partial.jsonl").exists()


def test_memory_stays_flat_over_many_rows(tmp_path):
    """100k rows through the loop: peak RSS must not grow with rows (generous bound, not a timing)."""
    src = tmp_path / "big.jsonl"
    with src.open("w") as fh:
        for i in range(100_000):
            fh.write(f'{{"messages": [{{"role": "user", "content": "q{i}"}}]}}\n')
    code = (
        "import asyncio, sys; sys.path.insert(0, {!r})\n"
        "from infermux_echo import EchoEngine\n"
        "from infermux.configs import ModelParams, GenerationParams\n"
        "e = EchoEngine(ModelParams(model_name='echo'), generation_params=GenerationParams(batch_size=64))\n"
        "r = asyncio.run(e.run_file({!r}, {!r}))\n"
        # VmHWM, not ru_maxrss: the latter keeps the forking parent's peak across exec.
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "print(r.done, int(hwm) // 1024)\n"
    ).format(str(Path(__file__).parents[1] / "plugin_site"), str(src), str(tmp_path / "out.jsonl"))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    done, rss_mb = map(int, res.stdout.split())
    assert done == 100_000
    assert rss_mb < 300, f"peak RSS {rss_mb} MB"
    assert sum(1 for _ in (tmp_path / "out.jsonl").open()) == 100_000


def test_inference_config_round_trip_through_infer(tmp_path):
    src = write_input(tmp_path / "in.jsonl", ["x", "y"])
    cfg = InferenceConfig(
        model=ModelParams(model_name="echo"), input_path=str(src), output_path=str(tmp_path / "o.jsonl")
    )
    out = engine().infer(inference_config=cfg)
    assert [c.last_message.text for c in out] == ["echo: x", "echo: y"]
    cfg.output_path = None
    assert [c.last_message.text for c in engine().infer(inference_config=cfg)] == ["echo: x", "echo: y"]
