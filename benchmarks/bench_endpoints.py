"""One remote engine over 1, 2 and 4 servers (``remote_params.endpoints``, issue 29) against bare aiohttp.

Each server is ``benchmarks/stub_server.py`` answering after ``--latency-ms`` and at most ``--cap``
requests at once (``--max-concurrency``: a GPU server with a full batch), so one server's throughput is
about ``cap / latency`` and the only way to go faster is more servers. For each count of servers:

- **infermux**: the REMOTE engine with one endpoint per server, ``num_workers: cap`` each, one job of
  ``--rows-per-endpoint × servers`` rows (``engine.infer``: routing, retries, ordering included);
- **bare**: one bare aiohttp client (:mod:`bare_aiohttp`) per server in the same event loop, each sending
  its even share of the rows with ``cap`` workers: the least any client must do.

The two alternate (ABBA) over ``--repeat`` runs; medians are reported as rows per second, infermux's
ratio to bare (goal: at least 0.9) and its scaling over one server (goal: near the server count).

Usage: ``python benchmarks/bench_endpoints.py [--counts 1,2,4] [--repeat 3] [--rows-per-endpoint 400]
[--latency-ms 100] [--cap 8] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bare_aiohttp  # noqa: E402
import stub_server  # noqa: E402


def _texts(n: int) -> list[str]:
    return [f"Write a sentence about the number {i}." for i in range(n)]


@contextlib.contextmanager
def _servers(count: int, latency_ms: float, cap: int) -> Iterator[list[str]]:
    with contextlib.ExitStack() as stack:
        args = ("--latency-ms", str(latency_ms), "--max-concurrency", str(cap))
        yield [stack.enter_context(stub_server.spawn(*args)) for _ in range(count)]


def _infermux(urls: list[str], texts: list[str], cap: int) -> float:
    """Seconds for the whole job through one REMOTE engine over every server."""
    from infermux.configs import ModelParams, RemoteParams
    from infermux.configs.endpoint_params import EndpointParams
    from infermux.engines.remote.openai.engine import RemoteInferenceEngine
    from infermux.types import Conversation

    rows = [Conversation.model_validate({"messages": [{"role": "user", "content": t}]}) for t in texts]
    endpoints = [EndpointParams(url=url + "/v1", num_workers=cap) for url in urls]
    engine = RemoteInferenceEngine(ModelParams(model_name="stub"), remote_params=RemoteParams(endpoints=endpoints))
    start = time.perf_counter()
    out = engine.infer(rows)
    elapsed = time.perf_counter() - start
    lost = sum(1 for t, c in zip(texts, out, strict=True) if c.messages[-1].content != f"echo: {t}")
    if lost:
        raise SystemExit(f"infermux lost {lost} rows: the benchmark is void")
    return elapsed


def _bare(urls: list[str], texts: list[str], cap: int) -> float:
    """Seconds for the same rows split evenly over one bare aiohttp client per server, all at once."""
    bodies = [
        {"model": "stub", "messages": [{"role": "user", "content": t}], "max_tokens": 256, "temperature": 0.0}
        for t in texts
    ]
    shares = [bodies[i :: len(urls)] for i in range(len(urls))]

    async def all_clients() -> None:
        pairs = zip(urls, shares, strict=True)
        await asyncio.gather(*(bare_aiohttp.run(url + "/v1/chat/completions", share, cap) for url, share in pairs))

    start = time.perf_counter()
    asyncio.run(all_clients())
    return time.perf_counter() - start


def measure(count: int, args: argparse.Namespace) -> dict[str, Any]:
    texts = _texts(args.rows_per_endpoint * count)
    ours: list[float] = []
    bare: list[float] = []
    with _servers(count, args.latency_ms, args.cap) as urls:
        runs = [(bare, lambda: _bare(urls, texts, args.cap)), (ours, lambda: _infermux(urls, texts, args.cap))]
        for i in range(args.repeat):
            for bucket, run in runs if i % 2 == 0 else runs[::-1]:
                bucket.append(run())
    o, b = statistics.median(ours), statistics.median(bare)
    return {
        "endpoints": count,
        "rows": len(texts),
        "infermux_rows_per_s": len(texts) / o,
        "bare_rows_per_s": len(texts) / b,
        "ratio_to_bare": b / o,
        "ideal_rows_per_s": count * args.cap / (args.latency_ms / 1000.0),
        "all_infermux_s": [round(t, 3) for t in ours],
        "all_bare_s": [round(t, 3) for t in bare],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1,2,4", help="server counts to measure")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rows-per-endpoint", type=int, default=400)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--cap", type=int, default=8, help="requests each server answers at once")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    results = [measure(int(n), args) for n in args.counts.split(",")]
    one = next((r for r in results if r["endpoints"] == 1), None)
    print(f"{'servers':>7} {'rows':>6} {'infermux rows/s':>16} {'bare rows/s':>12} {'vs bare':>8} {'scaling':>8}")
    for r in results:
        if one is not None:
            r["scaling_over_one"] = r["infermux_rows_per_s"] / one["infermux_rows_per_s"]
        scaling = f"{r['scaling_over_one']:.2f}x" if one is not None else "-"
        print(
            f"{r['endpoints']:>7} {r['rows']:>6} {r['infermux_rows_per_s']:>16.1f} {r['bare_rows_per_s']:>12.1f} "
            f"{r['ratio_to_bare']:>8.3f} {scaling:>8}"
        )
    print(f"(ideal per server: {args.cap / (args.latency_ms / 1000.0):.0f} rows/s; vs bare: goal >= 0.9)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
