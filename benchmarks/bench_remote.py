"""Remote-engine benchmarks (issue 4): infermux's REMOTE engine against a bare aiohttp loop, side by side.

Every workload runs against ``benchmarks/stub_server.py`` (a child process on 127.0.0.1), and the bare
aiohttp baseline (:mod:`bare_aiohttp`) runs in the same process tree, alternating with infermux, so the
ratios compare like with like on a busy machine. Medians of ``--repeat`` runs (default 5) are reported, after
one untimed run of each.

- P1: 2000 conversations, 100 workers, 50 ms latency, default settings; ratio to bare and to the ideal
  (2000 × 0.05 / 100 = 1.0 s).
- P2: 5000 requests, 64 workers, 0 ms latency.
- P3: 1000 conversations, 50 workers, 20 ms latency, 20 % faults (429 with Retry-After: 0, 500, 503,
  dropped connections, truncated JSON), ``max_retries: 10``, ``retry_backoff_base: 0.1``; rows lost
  (bare aiohttp has no retries, so it loses the faulted ones).
- P4: ``infermux infer`` on a remote config: process start to the server's first request.
- P8: 100,000 conversations through ``infermux infer``: peak RSS of the CLI process.
- P9: the P8 job with the same rows as Parquet in and out (``messages`` column, 50,000-row groups) beside
  it in JSONL, run ABBA: peak RSS of each and Parquet's mean rows per second over JSONL's (issue 30: < 500 MB, >= 0.9x).

Usage: ``python benchmarks/bench_remote.py [--only P1,P2] [--repeat 3] [--p8-rows 100000] [--p9-once]``
(``--p9-once``: P9 runs each format once, JSONL then Parquet, instead of ABBA).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bare_aiohttp  # noqa: E402
import stub_server  # noqa: E402


def _texts(n: int) -> list[str]:
    return [f"Write a sentence about the number {i}." for i in range(n)]


def _bodies(texts: list[str]) -> list[dict[str, Any]]:
    return [
        {"model": "stub", "messages": [{"role": "user", "content": t}], "max_tokens": 256, "temperature": 0.0}
        for t in texts
    ]


def _stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/_stub/stats") as resp:
        data: dict[str, Any] = json.loads(resp.read())
    return data


def _reset(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(url + "/_stub/reset", method="POST")).close()


def _infermux_run(url: str, texts: list[str], workers: int, **remote: Any) -> tuple[float, float, int]:
    """Wall seconds, client CPU seconds and rows lost for one infermux run (engine built outside)."""
    from infermux.configs import ModelParams, RemoteParams
    from infermux.engines.remote.openai.engine import RemoteInferenceEngine
    from infermux.types import Conversation

    conversations = [Conversation.model_validate({"messages": [{"role": "user", "content": t}]}) for t in texts]
    engine = RemoteInferenceEngine(
        ModelParams(model_name="stub"), remote_params=RemoteParams(api_url=url, num_workers=workers, **remote)
    )
    cpu, start = time.process_time(), time.perf_counter()
    out = engine.infer(conversations)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    lost = sum(1 for t, c in zip(texts, out, strict=True) if c.messages[-1].content != f"echo: {t}")
    return elapsed, cpu, lost


def _bare_run(url: str, texts: list[str], workers: int) -> tuple[float, float, int]:
    # Timed as one whole call (event loop, session, requests, close), like ``engine.infer`` is.
    bodies = _bodies(texts)
    cpu, start = time.process_time(), time.perf_counter()
    results, _ = bare_aiohttp.run_sync(url + "/v1/chat/completions", bodies, workers)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    lost = sum(1 for t, r in zip(texts, results, strict=True) if r != f"echo: {t}")
    return elapsed, cpu, lost


def _side_by_side(url: str, texts: list[str], workers: int, repeat: int, **remote: Any) -> dict[str, Any]:
    bare: list[tuple[float, float, int]] = []
    ours: list[tuple[float, float, int]] = []
    runs: list[tuple[list[tuple[float, float, int]], Callable[[], tuple[float, float, int]]]] = [
        (bare, lambda: _bare_run(url, texts, workers)),
        (ours, lambda: _infermux_run(url, texts, workers, **remote)),
    ]
    for _, run in runs:  # one untimed run each first: imports and first-call set-up are not per-row costs
        _reset(url)
        run()
    for i in range(repeat):
        for bucket, run in runs if i % 2 == 0 else runs[::-1]:
            _reset(url)
            bucket.append(run())
    b = statistics.median(t for t, _, _ in bare)
    o = statistics.median(t for t, _, _ in ours)
    b_cpu = statistics.median(c for _, c, _ in bare)
    o_cpu = statistics.median(c for _, c, _ in ours)
    return {
        "bare_s": b,
        "infermux_s": o,
        "ratio": o / b,
        "bare_cpu_s": b_cpu,
        "infermux_cpu_s": o_cpu,
        "cpu_ratio": o_cpu / b_cpu,
        "bare_lost": max(n for _, _, n in bare),
        "infermux_lost": max(n for _, _, n in ours),
        "all_infermux_s": [round(t, 3) for t, _, _ in ours],
        "all_bare_s": [round(t, 3) for t, _, _ in bare],
    }


def p1(repeat: int) -> dict[str, Any]:
    with stub_server.spawn("--latency-ms", "50") as url:
        result = _side_by_side(url, _texts(2000), 100, repeat)
    result["ideal_s"] = 2000 * 0.05 / 100
    result["ratio_to_ideal"] = result["infermux_s"] / result["ideal_s"]
    return result


def p2(repeat: int) -> dict[str, Any]:
    with stub_server.spawn("--latency-ms", "0") as url:
        return _side_by_side(url, _texts(5000), 64, repeat)


# P3 asks for nothing lost: with 16 % of attempts failing without a rate-limit hint, 3 retries lose
# about 0.7 rows per 1000 by arithmetic (0.16^4), so the run allows 10; a 0.1 s back-off base keeps
# the unluckiest row's wait (5 failures in a row) near a second instead of ~15 s with the 1 s default.
P3_SETTINGS = {"max_retries": 10, "retry_backoff_base": 0.1}


def p3(repeat: int) -> dict[str, Any]:
    args = ("--latency-ms", "20", "--fault-rate", "0.2", "--faults", "429,500,503,drop,truncate", "--seed", "1")
    with stub_server.spawn(*args) as url:
        result = _side_by_side(url, _texts(1000), 50, repeat, **P3_SETTINGS)
        result["faults"] = _stats(url)["faults"]
    return result


def _write_job(tmp: Path, url: str, rows: int, workers: int) -> tuple[Path, Path]:
    config = tmp / "remote.yaml"
    config.write_text(
        "model: {model_name: stub}\nengine: REMOTE\ngeneration: {max_new_tokens: 16}\n"
        f"remote_params: {{api_url: '{url}/v1', num_workers: {workers}}}\n"
    )
    inp = tmp / "in.jsonl"
    with inp.open("w") as fh:
        for text in _texts(rows):
            fh.write(json.dumps({"messages": [{"role": "user", "content": text}]}) + "\n")
    return config, inp


def _cli(config: Path, inp: Path, out: Path) -> list[str]:
    # --no-cache: every run sends its rows (greedy rows are answered from the answer cache by default, and a
    # second run would send nothing: P4 found no request to time)
    return [sys.executable, "-m", "infermux", "infer", "-c", str(config), "--input_path", str(inp),
            "--output_path", str(out), "--log-level", "warning", "--no-cache"]  # fmt: skip


def p4(repeat: int) -> dict[str, Any]:
    times = []
    with stub_server.spawn("--latency-ms", "0") as url, tempfile.TemporaryDirectory() as tmp:
        config, inp = _write_job(Path(tmp), url, 10, 4)
        for i in range(repeat):
            _reset(url)
            out = Path(tmp) / f"out{i}.jsonl"
            start = time.time()
            subprocess.run(_cli(config, inp, out), check=True, stdout=subprocess.DEVNULL)
            first = _stats(url)["first_request_at"]
            times.append(first - start)
    return {"start_to_first_request_s": statistics.median(times), "all_s": [round(t, 3) for t in times]}


def p8(rows: int) -> dict[str, Any]:
    with stub_server.spawn("--latency-ms", "0") as url, tempfile.TemporaryDirectory() as tmp:
        config, inp = _write_job(Path(tmp), url, rows, 64)
        out = Path(tmp) / "out.jsonl"
        code, peak, elapsed = _run_measured(_cli(config, inp, out))
        with out.open() as fh:
            written = sum(1 for _ in fh)
    return {"rows": rows, "exit_code": code, "rows_written": written, "peak_rss_mb": peak, "wall_s": elapsed}


# Runs a command as its own child and prints that child's exit code and peak RSS. A child forked straight
# from the benchmark (which holds the job's rows, hundreds of MB at 1,000,000) would report the
# benchmark's RSS: Linux keeps a process's peak RSS across fork and exec.
_PEAK = (
    "import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL); "
    "_, s, u = os.wait4(p.pid, 0); print(os.waitstatus_to_exitcode(s), u.ru_maxrss)"
)


def _run_measured(cmd: list[str]) -> tuple[int, float, float]:
    """Run ``cmd``; return its exit code, its own peak RSS (MB) and its wall time (s)."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _PEAK, *cmd], check=True, capture_output=True, text=True).stdout
    elapsed = time.perf_counter() - start
    code, rss_kb = out.split()
    return int(code), int(rss_kb) / 1024, elapsed


def p9(rows: int, once: bool = False) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    result: dict[str, Any] = {"rows": rows}
    with stub_server.spawn("--latency-ms", "0") as url, tempfile.TemporaryDirectory() as tmp:
        config, inp = _write_job(Path(tmp), url, rows, 64)
        table = pa.table({"messages": [[{"role": "user", "content": t}] for t in _texts(rows)]})
        pq.write_table(table, Path(tmp) / "in.parquet", row_group_size=50_000)
        del table
        runs: dict[str, list[dict[str, float]]] = {"jsonl": [], "parquet": []}
        # ABBA: the stub server slows down over a run, so each format goes first once and second once.
        # ``once``: one run of each (a quick look; the ratio then favours the format that goes first).
        order = ("jsonl", "parquet") if once else ("jsonl", "parquet", "parquet", "jsonl")
        for n, fmt in enumerate(order):
            source = inp if fmt == "jsonl" else Path(tmp) / "in.parquet"
            cmd = _cli(config, source, Path(tmp) / f"out{n}.{fmt}")  # both send every row
            _reset(url)  # the stub keeps each request's text: every run starts from an empty log
            code, peak, elapsed = _run_measured(cmd)
            runs[fmt].append({"exit_code": code, "peak_rss_mb": peak, "wall_s": elapsed, "rows_per_s": rows / elapsed})
        for fmt, done in runs.items():
            result[fmt] = {
                "exit_code": max(r["exit_code"] for r in done),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in done),
                "rows_per_s": statistics.mean(r["rows_per_s"] for r in done),
                "runs": done,
            }
    result["parquet_over_jsonl"] = result["parquet"]["rows_per_s"] / result["jsonl"]["rows_per_s"]
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="Remote engine benchmarks (P1-P4, P8, P9)")
    parser.add_argument("--only", default="P1,P2,P3,P4,P8")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--p8-rows", type=int, default=100_000)
    parser.add_argument("--p9-once", action="store_true", help="P9: one run per format instead of four (ABBA)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    wanted = {w.strip().upper() for w in args.only.split(",")}
    results: dict[str, Any] = {"load_average_at_start": os.getloadavg()}
    print(f"load average at start: {results['load_average_at_start']}", flush=True)
    steps: dict[str, Callable[[], dict[str, Any]]] = {
        "P1": lambda: p1(args.repeat),
        "P2": lambda: p2(args.repeat),
        "P3": lambda: p3(args.repeat),
        "P4": lambda: p4(max(args.repeat, 3)),
        "P8": lambda: p8(args.p8_rows),
        "P9": lambda: p9(args.p8_rows, once=args.p9_once),
    }
    for name, step in steps.items():
        if name in wanted:
            results[name] = step()
            _print(name, results[name])
    results["load_average_at_end"] = os.getloadavg()
    print(f"load average at end: {results['load_average_at_end']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


def _print(name: str, r: dict[str, Any]) -> None:
    if "ratio" in r:
        line = (
            f"{name}: infermux {r['infermux_s']:.3f}s  bare aiohttp {r['bare_s']:.3f}s  "
            f"ratio {r['ratio']:.3f} (client CPU {r['cpu_ratio']:.2f}x)  "
            f"lost infermux/bare {r['infermux_lost']}/{r['bare_lost']}"
        )
        if "ratio_to_ideal" in r:
            line += f"  ideal {r['ideal_s']:.2f}s (x{r['ratio_to_ideal']:.2f})"
        if "faults" in r:
            line += f"  faults {r['faults']}"
    elif name == "P9":
        j, q = r["jsonl"], r["parquet"]
        line = (
            f"P9: {r['rows']} rows  JSONL {j['rows_per_s']:.0f} rows/s, peak RSS {j['peak_rss_mb']:.0f} MB  "
            f"Parquet {q['rows_per_s']:.0f} rows/s, peak RSS {q['peak_rss_mb']:.0f} MB  "
            f"ratio {r['parquet_over_jsonl']:.2f}"
        )
    elif name == "P4":
        line = f"P4: process start to first request {r['start_to_first_request_s']:.3f}s  runs {r['all_s']}"
    else:
        line = (
            f"P8: {r['rows']} rows, exit {r['exit_code']}, written {r['rows_written']}, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB, wall {r['wall_s']:.1f}s"
        )
    print(line, flush=True)


if __name__ == "__main__":
    main()
