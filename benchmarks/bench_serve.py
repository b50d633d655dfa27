"""``infermux serve`` against the servers it replaces, same model, same clients, same run.

16 concurrent clients each send 8 streamed chat requests ("Write a sentence about the number k.",
greedy, at most 64 new tokens) to:

- ``serve-llamacpp``: ``infermux serve`` on the default model (LLAMACPP, the packaged GGUF);
- ``llama_cpp.server``: ``python -m llama_cpp.server`` on the same GGUF (``--interrupt_requests False``:
  by default it aborts a running answer when the next request arrives);
- ``serve-vllm``: ``infermux serve --engine VLLM`` on the default model's Hugging Face folder;
- ``vllm serve``: vLLM's own OpenAI server on the same folder (eager, 16 sequences, 1 GiB KV cache).

Each server gets one warm-up request first. Reported per server: completion tokens per second of wall
time (tokens from the final ``usage`` chunk, or the count of content chunks where a server sends no
usage), requests per second, and the median and 90th percentile time to first token.

    python benchmarks/bench_serve.py [--targets serve-llamacpp,llama_cpp.server,serve-vllm,vllm-serve]
                                     [--clients 16] [--requests 8] [--max-tokens 64]

Run it on a quiet machine (``uptime``): figures taken while other jobs load the cores are not comparable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")

TARGETS = ("serve-llamacpp", "llama_cpp.server", "serve-vllm", "vllm-serve")
DEFAULT_MODEL = "smollm2-135m-instruct"


@contextlib.contextmanager
def start(target: str) -> Iterator[tuple[str, str]]:
    """Start ``target``; yield (base URL with /v1, model name to send)."""
    from tests.conftest import cli_env
    from tests.serve.running import serve
    from tests.servers import LLAMA_CPP_SERVER, _http_server, default_gguf, free_port, vllm_server

    if target == "serve-llamacpp":
        with serve(timeout=600) as served:
            yield served.api, DEFAULT_MODEL
    elif target == "llama_cpp.server":
        # By default it aborts the running answer when a new request arrives (interrupt_requests): turn
        # that off, so every client gets its whole answer, as from ours.
        cmd = [
            sys.executable, str(LLAMA_CPP_SERVER), "--model", str(default_gguf()), "--model_alias", DEFAULT_MODEL,
            "--host", "127.0.0.1", "--port", str(port := free_port()), "--n_ctx", "2048", "--n_threads", "2",
            "--interrupt_requests", "False",
        ]  # fmt: skip
        with _http_server(cmd, f"http://127.0.0.1:{port}/v1/models", timeout=300):
            yield f"http://127.0.0.1:{port}/v1", DEFAULT_MODEL
    elif target == "serve-vllm":
        args = ("--engine", "VLLM", "--model.model_name", DEFAULT_MODEL, "--model.model_max_length", "1024")
        with serve(*args, env=cli_env(), timeout=900) as served:
            yield served.api, DEFAULT_MODEL
    elif target == "vllm-serve":
        with vllm_server(served_name=DEFAULT_MODEL, timeout=900) as url:
            yield url + "/v1", DEFAULT_MODEL
    else:
        raise SystemExit(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")


async def one_request(session: object, api: str, model: str, prompt: str, max_tokens: int) -> tuple[float, int]:
    """Stream one answer; return (seconds to first content, completion tokens)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start_at = time.perf_counter()
    first: float | None = None
    chunks = 0
    usage: int | None = None
    async with session.post(api + "/chat/completions", json=body) as resp:  # type: ignore[attr-defined]
        if resp.status != 200:
            raise RuntimeError(f"{resp.status}: {(await resp.text())[:300]}")
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            data = json.loads(line[5:])
            if data.get("usage"):
                usage = data["usage"]["completion_tokens"]
            for choice in data.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    chunks += 1
                    if first is None:
                        first = time.perf_counter() - start_at
    return (first if first is not None else time.perf_counter() - start_at), (usage if usage is not None else chunks)


async def load(
    api: str, model: str, clients: int, requests: int, max_tokens: int, *, fresh_connections: bool = False
) -> dict[str, float]:
    """``fresh_connections``: one connection per request (servers that close kept-alive connections after a
    few requests, as llama-server's HTTP library does, would otherwise fail a pooled request)."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=3600)
    connector = aiohttp.TCPConnector(force_close=fresh_connections)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await one_request(session, api, model, "Hello.", 8)  # warm-up

        async def client(c: int) -> list[tuple[float, int]]:
            return [
                await one_request(
                    session, api, model, f"Write a sentence about the number {c * requests + r}.", max_tokens
                )
                for r in range(requests)
            ]

        began = time.perf_counter()
        results = [x for per in await asyncio.gather(*(client(c) for c in range(clients))) for x in per]
        wall = time.perf_counter() - began
    ttfts = sorted(t for t, _ in results)
    tokens = sum(n for _, n in results)
    return {
        "wall_s": wall,
        "tokens": tokens,
        "tok_s": tokens / wall,
        "req_s": len(results) / wall,
        "ttft_p50_ms": 1000 * statistics.median(ttfts),
        "ttft_p90_ms": 1000 * ttfts[max(0, math.ceil(0.9 * len(ttfts)) - 1)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    print(f"load average: {os.getloadavg()[0]:.2f}; {args.clients} clients x {args.requests} requests, "
          f"<= {args.max_tokens} tokens, greedy, streamed")  # fmt: skip
    print(
        f"{'server':<18} {'tok/s':>8} {'req/s':>7} {'TTFT p50 ms':>12} {'TTFT p90 ms':>12} {'tokens':>7} {'wall s':>7}"
    )
    results: dict[str, dict[str, float]] = {}
    for target in args.targets.split(","):
        with start(target.strip()) as (api, model):
            r = results[target.strip()] = asyncio.run(load(api, model, args.clients, args.requests, args.max_tokens))
        print(f"{target:<18} {r['tok_s']:8.1f} {r['req_s']:7.2f} {r['ttft_p50_ms']:12.0f} {r['ttft_p90_ms']:12.0f} "
              f"{r['tokens']:7.0f} {r['wall_s']:7.1f}", flush=True)  # fmt: skip
    for ours, theirs in (("serve-llamacpp", "llama_cpp.server"), ("serve-vllm", "vllm-serve")):
        if ours in results and theirs in results:
            a, b = results[ours], results[theirs]
            print(f"{ours} / {theirs}: throughput {a['tok_s'] / b['tok_s']:.2f}x, "
                  f"TTFT p50 {a['ttft_p50_ms']:.0f} ms vs {b['ttft_p50_ms']:.0f} ms")  # fmt: skip
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
