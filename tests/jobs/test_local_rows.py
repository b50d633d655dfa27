"""Local engines record each row as it finishes: on the default model, a ``kill -9`` in the middle of a
chunk keeps the rows already finished, and the rerun answers only the others."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, cli_env

#: Short answers and long ones (200 tokens) in one chunk: the short rows end many steps before the chunk.
PROMPTS = [
    "What color is the sky on a clear day? Answer with one word.",
    "Write a long story about a dragon who learns to bake bread, with many details.",
    "Is water wet? Answer yes or no.",
    "Explain in detail how a car engine works, step by step.",
    "What is 2+2? Answer with just the number.",
    "Write a long essay about the history of Rome.",
    "Say hello.",
    "List one hundred animals, one per line.",
]

ENGINES = {
    "LLAMACPP": [],
    "NATIVE": [],
    "VLLM": [
        "--model.model_name",
        "smollm2-135m-instruct",
        "--model.model_max_length",
        "1024",
        "--model.model_kwargs.kv_cache_memory_bytes",
        str(512 * 1024**2),
    ],
}


def _needs(engine: str) -> None:
    modules = {"LLAMACPP": "llama_cpp", "NATIVE": "transformers", "VLLM": "vllm"}
    pytest.importorskip(modules[engine], reason=f"{engine} is not installed")


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.slow
@pytest.mark.parametrize("engine", list(ENGINES))
def test_a_kill_9_mid_chunk_keeps_the_rows_already_finished(engine: str, tmp_path: Path) -> None:
    _needs(engine)
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(json.dumps({"messages": [{"role": "user", "content": p}]}) + "\n" for p in PROMPTS))
    partial = out.with_name("out.jsonl.partial.jsonl")
    cmd = [sys.executable, "-m", "infermux", "infer", "--engine", engine, "--input_path", str(inp),
           "--output_path", str(out), "--generation.max_new_tokens", "200", "--generation.batch_size", "8",
           "--no-cache", "--log-level", "warning", *ENGINES[engine]]  # fmt: skip
    # Its own process group: VLLM's engine core and worker are child processes that outlive a kill -9 of the job
    # (they do not watch their parent), still decoding; the whole group is killed below so none lingers.
    proc = subprocess.Popen(cmd, env=cli_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while _lines(partial) == 0:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no row was recorded"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # one chunk of 8 rows, still decoding its long rows
        proc.wait()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    recorded = _lines(partial)
    assert 1 <= recorded < len(PROMPTS) and not out.exists()

    rerun = subprocess.run(cmd, env=cli_env(), cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(PROMPTS) - recorded} answered, {recorded} already done" in rerun.stderr, rerun.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["messages"][0]["content"] for r in rows] == PROMPTS and all(r["messages"][-1]["content"] for r in rows)
