"""Resume: kill ``infermux infer`` mid-job against a slow server, rerun, and compare."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.servers import stub_server

ROWS = 60


def _cli(config: Path, inp: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "infermux", "infer", "-c", str(config), "--input_path", str(inp),
            "--output_path", str(out), "--log-level", "warning"]  # fmt: skip


def _log(url: str) -> list[str]:
    with urllib.request.urlopen(url + "/_stub/log") as resp:
        data: list[str] = json.loads(resp.read())
    return data


def _done_texts(partial: Path) -> set[str]:
    done = set()
    for raw in partial.read_bytes().splitlines(keepends=True):
        if raw.endswith(b"\n"):
            record = json.loads(raw)
            done.add(record["conversation"]["messages"][0]["content"])
    return done


@pytest.mark.slow
def test_killed_job_resumes_without_resending_finished_rows(tmp_path: Path) -> None:
    texts = [f"row {i}" for i in range(ROWS)]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"messages": [{"role": "user", "content": t}]}) + "\n" for t in texts))
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    with stub_server("--latency-ms", "150") as url:
        config = tmp_path / "remote.yaml"
        config.write_text(
            "model: {model_name: stub}\nengine: REMOTE\ngeneration: {max_new_tokens: 8}\n"
            f"remote_params: {{api_url: '{url}/v1', num_workers: 4}}\n"
        )
        out = tmp_path / "out.jsonl"
        partial = out.with_name(out.name + ".partial.jsonl")
        proc = subprocess.Popen(_cli(config, inp, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not (partial.exists() and len(_done_texts(partial)) >= 20):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the job made no progress"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen_before = _log(url)
        done_before = _done_texts(partial)
        assert 20 <= len(done_before) < ROWS and not out.exists()

        rerun = subprocess.run(_cli(config, inp, out), env=env, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr
        seen_after = _log(url)[len(seen_before) :]
        in_flight = set(seen_before) - done_before
        assert len(seen_after) == len(set(seen_after)), "a row was sent twice after the restart"
        assert not set(seen_after) & done_before, "a finished row was sent again"
        assert set(seen_after) - in_flight == set(texts) - set(seen_before)
        assert done_before | set(seen_after) == set(texts)

        clean = tmp_path / "clean.jsonl"
        # a clean run answers every row itself (without --no-cache they would come from the answer cache)
        fresh = [*_cli(config, inp, clean), "--no-cache"]
        once = subprocess.run(fresh, env=env, capture_output=True, text=True, timeout=120)
        assert once.returncode == 0, once.stderr
    assert out.read_text() == clean.read_text()
    assert [json.loads(line)["messages"][-1]["content"] for line in out.read_text().splitlines()] == [
        f"echo: {t}" for t in texts
    ]
    assert not partial.exists()
