"""Core figures: `infermux --help` wall time, import cost of `infermux`, peak RSS of a 100k-row job.

Run: .venv/bin/python benchmarks/bench_core.py [--rows 100000]
The 100k-row job goes through the CLI and the durable loop with the echo test engine
(tests/plugin_site), so it measures infermux's own overhead, not a model.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_SITE = ROOT / "tests" / "plugin_site"


def help_time(runs: int = 7) -> float:
    exe = Path(sys.executable).with_name("infermux")
    cmd = [str(exe), "--help"] if exe.exists() else [sys.executable, "-m", "infermux", "--help"]
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def import_top(n: int = 6) -> list[tuple[int, str]]:
    cmd = [sys.executable, "-X", "importtime", "-c", "import infermux.cli.main"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    rows = []
    for line in res.stderr.splitlines()[1:]:
        parts = line.split("|")
        if len(parts) == 3:
            rows.append((int(parts[1]), parts[2].rstrip()))
    return sorted(rows, reverse=True)[:n]


def big_job(rows: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.jsonl"
        with src.open("w") as fh:
            for i in range(rows):
                fh.write(f'{{"messages": [{{"role": "user", "content": "question number {i}"}}]}}\n')
        cfg = Path(tmp) / "cfg.yaml"
        cfg.write_text("engine: ECHO\nmodel:\n  model_name: echo\ngeneration:\n  batch_size: 64\n")
        env = dict(os.environ, PYTHONPATH=str(PLUGIN_SITE))
        cmd = ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "infermux", "infer", "-c", str(cfg),
               "--input_path", str(src), "--output_path", str(Path(tmp) / "out.jsonl")]  # fmt: skip
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            raise SystemExit(res.stderr)
        return wall, int(res.stderr.strip().splitlines()[-1]) // 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    print(f"infermux --help: {help_time() * 1000:.0f} ms (median of 7; goal < 150 ms)")
    print("import infermux.cli.main, cumulative µs:")
    for us, name in import_top():
        print(f"  {us:>8}  {name}")
    wall, rss = big_job(args.rows)
    print(f"{args.rows} rows through the CLI (echo engine): {wall:.1f} s, peak RSS {rss} MB (goal ≤ 300 MB)")


if __name__ == "__main__":
    main()
