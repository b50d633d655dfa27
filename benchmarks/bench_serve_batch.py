"""Interactive time to first token on ``infermux serve`` with and without a Batch API batch running.

Starts ``infermux serve`` (the default model on LLAMACPP, or ``--config``) on a free port with a temporary
``--batch-dir``, then measures streamed chat requests (the official openai SDK, one at a time, greedy,
``--max-tokens`` new tokens): time from the call to the first text chunk. First without a batch, then
while a batch of ``--rows`` requests runs (submitted through the Files and Batch APIs; measuring starts
once its first rows are answered), then again without one (the batch cancelled). Prints the p50 (and p90)
of each phase, the ratio with / without (goal: at most 1.5), and the batch rows answered per second
while the interactive requests ran.

    python benchmarks/bench_serve_batch.py [--rows 2000] [--requests 30] [--config FILE] [--batch-concurrency 4]

Run it alone on a quiet machine: the figures are only comparable between phases of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = [f"In one sentence, why is the number {i} interesting?" for i in range(1000)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(args: argparse.Namespace, folder: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    log = folder / "serve.log"
    cmd = [sys.executable, "-m", "infermux", "serve", "--port", str(port), "--batch-dir", str(folder / "batches"),
           "--batch-concurrency", str(args.batch_concurrency)]  # fmt: skip
    if args.config:
        cmd += ["-c", args.config]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"infermux serve exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return proc, url, log
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("infermux serve did not start within 600 s")
        time.sleep(0.25)


def ttft(client: Any, model: str, question: str, max_tokens: int) -> float:
    started = time.perf_counter()
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0,
        stream=True,
    )  # fmt: skip
    first = None
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - started
    return first if first is not None else time.perf_counter() - started


def phase(client: Any, model: str, args: argparse.Namespace, offset: int) -> list[float]:
    return [
        ttft(client, model, QUESTIONS[(offset + i) % len(QUESTIONS)], args.max_tokens) for i in range(args.requests)
    ]


def summary(name: str, samples: list[float]) -> float:
    p50 = statistics.median(samples)
    p90 = statistics.quantiles(samples, n=10)[-1] if len(samples) >= 2 else p50
    print(f"{name:<28} p50 {p50 * 1000:8.1f} ms   p90 {p90 * 1000:8.1f} ms   ({len(samples)} requests)")
    return p50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2000, help="requests in the batch")
    parser.add_argument("--requests", type=int, default=30, help="interactive requests per phase")
    parser.add_argument("--max-tokens", type=int, default=16, help="new tokens per interactive request")
    parser.add_argument("--batch-max-tokens", type=int, default=32, help="new tokens per batch request")
    parser.add_argument("--batch-concurrency", type=int, default=4)
    parser.add_argument("--config", help="a serve config (default: the default model)")
    args = parser.parse_args()
    import openai

    with tempfile.TemporaryDirectory(prefix="bench-serve-batch-") as tmp:
        proc, url, _ = start(args, Path(tmp))
        try:
            client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
            model = client.models.list().data[0].id
            phase(client, model, argparse.Namespace(**{**vars(args), "requests": 2}), 900)  # warm-up
            without = phase(client, model, args, 0)
            lines = [
                {"custom_id": f"row-{i}", "method": "POST", "url": "/v1/chat/completions",
                 "body": {"model": model, "max_tokens": args.batch_max_tokens, "temperature": 0,
                          "messages": [{"role": "user", "content": f"Write a sentence about the number {i}."}]}}
                for i in range(args.rows)
            ]  # fmt: skip
            data = ("\n".join(json.dumps(line) for line in lines) + "\n").encode()
            file_id = client.files.create(file=("bench.jsonl", data), purpose="batch").id
            batch = client.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            while (batch := client.batches.retrieve(batch.id)).request_counts.completed < 2:
                if batch.status not in ("validating", "in_progress"):
                    raise SystemExit(f"the batch ended early: {batch}")
                time.sleep(0.1)
            before, t0 = batch.request_counts.completed, time.perf_counter()
            during = phase(client, model, args, 100)
            batch = client.batches.retrieve(batch.id)
            rate = (batch.request_counts.completed - before) / (time.perf_counter() - t0)
            still = batch.status == "in_progress"
            if batch.status not in ("completed", "failed"):
                client.batches.cancel(batch.id)
                while client.batches.retrieve(batch.id).status == "cancelling":
                    time.sleep(0.1)
            after = phase(client, model, args, 200)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        print(f"infermux serve ({args.config or 'default model'}), batch of {args.rows} rows, "
              f"--batch-concurrency {args.batch_concurrency}, interactive max_tokens {args.max_tokens}")  # fmt: skip
        base = summary("without a batch (before)", without)
        loaded = summary("while the batch runs", during)
        summary("without a batch (after)", after)
        print(f"ratio with / without: {loaded / base:.2f} (goal <= 1.5); batch rows answered meanwhile: "
              f"{rate:.1f}/s{'' if still else ' (the batch finished during the phase: use more --rows)'}")  # fmt: skip


if __name__ == "__main__":
    main()
