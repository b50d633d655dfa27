"""llama.cpp's own server (``llama-server``, continuous batching) as the anchor for LLAMACPP and ``serve``.

``llama-server`` runs the same kernels as our binding; it is built once from the llama.cpp sources vendored
in the installed llama-cpp-python's source distribution, with the Makefile's ``LLAMACPP_CMAKE_ARGS``
(``-DGGML_NATIVE=OFF`` unless set), under ``~/.cache/infermux/llama-server/<version>-<key>/`` (6+ minutes
on 2 cores the first time; never part of ``make test``). Then, on the default model's GGUF, greedy, at most
64 new tokens:

- ``batch``: the LLAMACPP batch job (``engine.infer``, 32 slots, empty cache each run) against
  ``llama-server -np 32`` fed the same 32 prompts at once (``/completion`` with the engine's own prompt
  tokens, ``cache_prompt`` off: cold, as the engine), workloads ``number`` and ``prefix`` of
  ``local_common``; answers compared row for row. Batch independence is checked on llama-server itself:
  ``-np 1`` (one request at a time, each decoded alone) against ``-np 32``; rows where those two agree are
  the ones whose answer does not depend on the batch, and the engine is compared on them as well.
  The one-at-a-time figures (``-np 1``, and llama-cpp-python's ``create_chat_completion`` in a loop: Oumi's
  way) are printed beside them.
- ``serve``: ``infermux serve`` (default engine) against ``llama-server -np 16``, 16 streamed clients x 8
  requests of distinct prompts (``bench_serve.load``): throughput and p50 time to first token
  (``--serve-flash-attn``: also ``infermux serve`` with ``model_kwargs.flash_attn: false``, the plain path).
- the physical limit: the model's FLOPs per token, and what this machine does on the same kernels at
  their best (one 512-token prompt through llama.cpp: Q4_1 weights; a 512x576 @ 576x1536 torch matmul for
  float32 and bfloat16); each throughput is printed as a share of it.

Both servers get the engine's threads (``-t``/``-tb``), batch sizes, flash-attention setting and
``OMP_WAIT_POLICY``, so only the serving differs (``--own-settings``: llama-server's own defaults instead).

    python benchmarks/llama_server.py [--parts limit,batch,serve] [--build-only] [--repeats 2] [--own-settings]
                                      [--serve-flash-attn]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT), str(Path(__file__).resolve().parent)]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_llamacpp import raw_one_at_a_time  # noqa: E402
from local_common import (  # noqa: E402
    MAX_NEW_TOKENS,
    Measurement,
    chat_messages,
    conversations,
    count_tokens,
    number_prompts,
    prefix_system,
    timed,
)

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "infermux" / "llama-server"
N_CTX = 2048  # per sequence, as bench_llamacpp


# ---------------------------------------------------------------------------------------------- build
def cmake_args() -> str:
    """``LLAMACPP_CMAKE_ARGS`` from the environment, else the Makefile's default (what the installer uses)."""
    if "LLAMACPP_CMAKE_ARGS" in os.environ:
        return os.environ["LLAMACPP_CMAKE_ARGS"]
    found = re.search(r"^LLAMACPP_CMAKE_ARGS \?= (.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    return found.group(1).strip() if found else "-DGGML_NATIVE=OFF"


def build(version: str, args: str) -> Path:
    """The ``llama-server`` binary of llama-cpp-python ``version`` built with ``args`` (built if missing)."""
    key = hashlib.sha256(f"{version}|{args}".encode()).hexdigest()[:16]
    if "GGML_NATIVE=OFF" not in args:  # the build depends on this CPU (as scripts/install_llamacpp.sh)
        flags = next((x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags")), "")
        key += "-" + hashlib.sha256(flags.encode()).hexdigest()[:16]
    binary = CACHE / f"{version}-{key}" / "llama-server"
    if binary.exists():
        return binary
    sdist = CACHE / "src" / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.exists():
        sdist.parent.mkdir(parents=True, exist_ok=True)
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*pip, "-d", str(sdist.parent), f"llama-cpp-python=={version}"], check=True)
    print(f"building llama-server {version} with {args!r} (6+ minutes on 2 cores, once) ...", flush=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        source = Path(tmp) / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
        out = Path(tmp) / "build"
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        configure = ["cmake", "-S", str(source), "-B", str(out), *generator, "-DCMAKE_BUILD_TYPE=Release",
                     *args.split(), "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                     "-DLLAMA_BUILD_SERVER=ON", "-DBUILD_SHARED_LIBS=OFF"]  # fmt: skip
        nice = ["nice", "-n", "10"] if shutil.which("nice") else []
        subprocess.run([*nice, *configure], check=True, stdout=subprocess.DEVNULL)
        jobs = str(os.cpu_count() or 1)
        subprocess.run([*nice, "cmake", "--build", str(out), "--target", "llama-server", "-j", jobs], check=True)
        binary.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(out / "bin" / "llama-server", binary.with_suffix(".partial"))
        binary.with_suffix(".partial").rename(binary)
    return binary


# ---------------------------------------------------------------------------------------------- servers
CACHE_TYPES = {0: "f32", 1: "f16", 8: "q8_0", 30: "bf16"}  # ggml_type -> llama-server's -ctk/-ctv name


def engine_settings(llama: Any) -> list[str]:
    """llama-server flags that give it what our engine's ``Llama`` runs with."""
    from infermux.engines.llamacpp.cpu import default_use_extra_bufts

    p = llama.context_params
    fa = {-1: "auto", 0: "off", 1: "on"}.get(int(p.flash_attn_type), "auto")
    flags = ["-t", str(p.n_threads), "-tb", str(p.n_threads_batch), "-b", str(p.n_batch), "-ub", str(p.n_ubatch)]
    flags += ["-fa", fa, "-ctk", CACHE_TYPES[int(p.type_k)], "-ctv", CACHE_TYPES[int(p.type_v)]]
    return flags if default_use_extra_bufts() else [*flags, "--no-repack"]


@contextlib.contextmanager
def llama_server(binary: Path, parallel: int, settings: list[str]) -> Iterator[str]:
    """``llama-server -np parallel`` on the default GGUF; yields its base URL."""
    from tests.servers import _http_server, default_gguf, free_port

    port = free_port()
    cmd = [str(binary), "-m", str(default_gguf()), "--host", "127.0.0.1", "--port", str(port), "-np", str(parallel),
           "-c", str(N_CTX * parallel), "--cont-batching", "--no-webui", "--alias", "smollm2-135m-instruct",
           *settings]  # fmt: skip
    with _http_server(cmd, f"http://127.0.0.1:{port}/health", timeout=300, env=dict(os.environ)):
        yield f"http://127.0.0.1:{port}"


async def _completions(url: str, prompts: list[list[int]]) -> list[str]:
    import aiohttp

    connector = aiohttp.TCPConnector(force_close=True)  # llama-server closes kept-alive connections early
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600), connector=connector) as session:

        async def one(tokens: list[int]) -> str:
            body = {"prompt": tokens, "n_predict": MAX_NEW_TOKENS, "temperature": 0.0, "cache_prompt": False}
            async with session.post(url + "/completion", json=body) as resp:
                return str((await resp.json())["content"])

        return list(await asyncio.gather(*(one(p) for p in prompts)))


def server_batch(name: str, url: str, prompts: list[list[int]]) -> Measurement:
    asyncio.run(_completions(url, [prompts[0][:8]]))  # warm-up
    return timed(name, lambda: asyncio.run(_completions(url, prompts)))


# ---------------------------------------------------------------------------------------------- limit
def flops_per_token(context: int) -> float:
    """2 FLOPs per weight of every matrix product (the tied embedding counts once, as the output layer)
    plus attention's two products over ``context`` earlier tokens."""
    from gguf import GGUFReader

    from infermux.models import gguf_path

    reader = GGUFReader(str(gguf_path()))
    names = {t.name: int(t.n_elements) for t in reader.tensors}
    weights = sum(n for name, n in names.items() if name.endswith(".weight") and "norm" not in name)
    if "output.weight" in names:  # untied: the embedding is a lookup, not a product
        weights -= names["token_embd.weight"]
    layers = sum(1 for name in names if name.endswith("attn_q.weight"))
    q_width = names["blk.0.attn_q.weight"] // int(reader.fields["llama.embedding_length"].parts[-1][0])
    return 2.0 * weights + 4.0 * layers * q_width * context


def llama_peak(engine: Any) -> float:
    """FLOP/s of llama.cpp's kernels at their best here: one 512-token prompt in one call."""
    d = engine._decoder
    tokens = [100 + (i % 1000) for i in range(min(512, d.n_batch))]
    best = float("inf")
    for _ in range(3):
        d._lib.llama_memory_seq_rm(d._mem, 0, 0, -1)
        for k, t in enumerate(tokens):
            d._add(k, t, k, 0, k == len(tokens) - 1)
        d._batch.n_tokens = len(tokens)
        start = time.perf_counter()
        d._decode()
        best = min(best, time.perf_counter() - start)
    d._lib.llama_memory_seq_rm(d._mem, 0, 0, -1)
    d._cached[0], d._exact[0] = [], 0
    return len(tokens) * flops_per_token(len(tokens) // 2) / best


def torch_peak(dtype: str) -> float:
    """FLOP/s of a plain 512x576 @ 576x1536 matrix product (the model's MLP shape) in ``dtype``."""
    import torch

    a, b = torch.randn(512, 576, dtype=getattr(torch, dtype)), torch.randn(576, 1536, dtype=getattr(torch, dtype))
    for _ in range(3):
        a @ b
    start, n = time.perf_counter(), 20
    for _ in range(n):
        a @ b
    return n * 2 * 512 * 576 * 1536 / (time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------- parts
def share(tok_s: float, per_token: float, peak: float | None) -> str:
    return f" ({100 * tok_s * per_token / peak:.1f} % of the kernels' peak)" if peak else ""


def line(m: Measurement, per_token: float, peak: float | None) -> None:
    print(f"  {m.name:<44} {m.tokens:>6} tok {m.seconds:>7.2f} s {m.tokens_per_second:>7.1f} tok/s"
          + share(m.tokens_per_second, per_token, peak), flush=True)  # fmt: skip


def same_rows(a: Measurement, b: Measurement, rows: list[int] | None = None) -> str:
    rows = list(range(len(a.texts))) if rows is None else rows
    same = sum(a.texts[i].strip() == b.texts[i].strip() for i in rows)
    return f"{same}/{len(rows)}"


def batch_part(binary: Path, engine: Any, repeats: int, peak: float | None) -> None:
    from infermux.configs import GenerationParams

    llama = engine._llama
    settings = engine_settings(llama)
    per_token = flops_per_token(40)

    def encode(text: str) -> list[int]:
        return list(llama.tokenize(text.encode(), add_bos=False))

    gen = GenerationParams(max_new_tokens=MAX_NEW_TOKENS)
    for workload in ("number", "prefix"):
        convs = conversations(number_prompts(), prefix_system() if workload == "prefix" else None)
        prompts = [p for p in (engine._prompt(c, gen) for c in convs) if isinstance(p, list)]
        print(f"\nworkload {workload!r}: 32 prompts ({sum(map(len, prompts)) // 32} tokens on average), "
              f"load average {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip

        def ours(convs: list = convs) -> list[str]:
            engine._decoder.forget_cache()
            return [c.last_message.text for c in engine.infer(convs)]

        runs: dict[str, list[Measurement]] = {"engine": [], "server": []}
        with llama_server(binary, 32, settings) as url:
            for _ in range(repeats):
                runs["server"].append(server_batch("llama-server -np 32, 32 at once", url, prompts))
                runs["engine"].append(timed("infermux LLAMACPP batch job, 32 slots", ours))
        with llama_server(binary, 1, settings) as url:
            alone = count_tokens(server_batch("llama-server -np 1 (one at a time)", url, prompts), encode)
        messages = chat_messages(number_prompts(), prefix_system() if workload == "prefix" else None)
        oumi = timed("llama-cpp-python, 1 at a time (Oumi's way)", lambda m=messages: raw_one_at_a_time(llama, m))
        raw = count_tokens(oumi, encode)
        server = count_tokens(min(runs["server"], key=lambda m: m.seconds), encode)
        ours_best = count_tokens(min(runs["engine"], key=lambda m: m.seconds), encode)
        for m in (server, ours_best, alone, raw):
            line(m, per_token, peak)
        independent = [i for i in range(32) if alone.texts[i].strip() == server.texts[i].strip()]
        print(f"  engine / llama-server: {ours_best.tokens_per_second / server.tokens_per_second:.2f}x; "
              f"identical rows: engine vs -np 32 {same_rows(ours_best, server)}, engine vs -np 1 "
              f"{same_rows(ours_best, alone)}; llama-server -np 1 vs -np 32 {len(independent)}/32 "
              f"(batch-independent rows), engine on those {same_rows(ours_best, server, independent)}",
              flush=True)  # fmt: skip


def serve_part(
    binary: Path, settings: list[str], clients: int, requests: int, peak: float | None, flash_attn: bool = False
) -> None:
    from tests.serve.running import serve

    from bench_serve import DEFAULT_MODEL, load, start

    per_token = flops_per_token(40)
    results = {}
    print(f"\nserve: {clients} streamed clients x {requests} requests, <= {MAX_NEW_TOKENS} tokens, greedy, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    with llama_server(binary, clients, settings) as url:
        api = url + "/v1"
        results[f"llama-server -np {clients}"] = asyncio.run(
            load(api, "smollm2-135m-instruct", clients, requests, MAX_NEW_TOKENS, fresh_connections=True)
        )
    with start("serve-llamacpp") as (api, model):  # the same client, one connection per request
        results["infermux serve (LLAMACPP)"] = asyncio.run(
            load(api, model, clients, requests, MAX_NEW_TOKENS, fresh_connections=True)
        )
    if flash_attn:  # the default before flash attention came with a bfloat16 V cache (engines/llamacpp/settings.py)
        with serve("--model.model_name", DEFAULT_MODEL, "--model.model_kwargs.flash_attn", "false", timeout=600) as s:
            results["infermux serve, flash_attn: false"] = asyncio.run(
                load(s.api, DEFAULT_MODEL, clients, requests, MAX_NEW_TOKENS, fresh_connections=True)
            )
    for name, r in results.items():
        print(f"  {name:<28} {r['tok_s']:7.1f} tok/s  TTFT p50 {r['ttft_p50_ms']:5.0f} ms  p90 "
              f"{r['ttft_p90_ms']:5.0f} ms  {r['tokens']:.0f} tokens" + share(r["tok_s"], per_token, peak))  # fmt: skip
    b = results[f"llama-server -np {clients}"]
    for name in [n for n in results if n.startswith("infermux serve")]:
        a = results[name]
        print(f"  {name} / llama-server: {a['tok_s'] / b['tok_s']:.2f}x throughput, "
              f"TTFT p50 {a['ttft_p50_ms']:.0f} vs {b['ttft_p50_ms']:.0f} ms", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--parts", default="limit,batch,serve")
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument(
        "--own-settings", action="store_true", help="llama-server with its default threads and flash attention"
    )
    parser.add_argument(
        "--serve-flash-attn",
        action="store_true",
        help="serve part: also infermux serve with model_kwargs flash_attn: false",
    )
    args = parser.parse_args()
    binary = build(dist_version("llama_cpp_python"), cmake_args())
    print(f"llama-server: {binary}")
    if args.build_only:
        return
    from infermux.configs import GenerationParams, ModelParams
    from infermux.engines.llamacpp.engine import LlamaCppInferenceEngine
    from infermux.engines.llamacpp.threads import choose_omp_wait_policy

    choose_omp_wait_policy()  # before llama.cpp loads; the servers inherit it
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(default)')}, load average {os.getloadavg()[0]:.2f}")
    parts = args.parts.split(",")
    engine = LlamaCppInferenceEngine(
        ModelParams(model_name="smollm2-135m-instruct", model_kwargs={"n_ctx": N_CTX, "n_seq_max": 32}),
        generation_params=GenerationParams(max_new_tokens=MAX_NEW_TOKENS),
    )
    settings = engine_settings(engine._llama)
    if args.own_settings:  # llama-server's own threads, batch sizes and flash attention (same weights buffers)
        settings = [] if "--no-repack" not in settings else ["--no-repack"]
    print(f"llama-server flags: {' '.join(settings) or '(its defaults)'}")
    peak = None
    if "limit" in parts:
        peak = llama_peak(engine)
        print(f"model: {flops_per_token(40) / 1e6:.0f} MFLOP per generated token (40 tokens of context); "
              f"llama.cpp Q4_1 at its best here (512-token prompt): {peak / 1e9:.1f} GFLOP/s, i.e. "
              f"{peak / flops_per_token(40):.0f} tok/s at most", flush=True)  # fmt: skip
        for dtype in ("float32", "bfloat16"):
            print(f"torch {dtype} matmul 512x576 @ 576x1536: {torch_peak(dtype) / 1e9:.1f} GFLOP/s")
    engine.infer(conversations(["Hello"]))  # warm-up
    if "batch" in parts:
        batch_part(binary, engine, args.repeats, peak)
    engine.close()
    if "serve" in parts:
        serve_part(binary, settings, args.clients, args.requests, peak, args.serve_flash_attn)


if __name__ == "__main__":
    main()
