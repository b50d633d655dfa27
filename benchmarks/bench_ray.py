"""Jobs on a Ray cluster (issue 13) against the same job in one process, in one run, side by side.

- R1: REMOTE, 20,000 rows, stub server with 20 ms latency: 4 replicas on this machine vs the one-process
  job with the same total concurrency (``num_workers``); wall ratio (target ≤ 1.2×) and the ideal
  (rows × latency / workers). The Ray instance is started before the clock starts (a cluster exists
  before a job runs); replica start-up is inside the measured time.
- R2: LLAMACPP, default model, 32 prompts × ≤ 64 new tokens, greedy: 2 replicas × 1 thread vs one
  process × 2 threads; completion tokens/s of both.
- R3: the driver's peak memory (VmHWM of the ``infermux infer --ray`` process alone) on a 1,000,000-row
  REMOTE job against a zero-latency stub (target < 500 MB).

Run alone (figures taken while other jobs load the machine are not comparable):

    .venv/bin/python benchmarks/bench_ray.py [--only R1,R2,R3] [--r1-rows 20000] [--r3-rows 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
# Ray's workers are new processes: they see this checkout's sources only through the environment.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE.parent / "src"), os.environ.get("PYTHONPATH")) if p)
sys.path.insert(0, str(HERE))

import stub_server  # noqa: E402
from infermux.configs import (  # noqa: E402
    DistributedParams,
    GenerationParams,
    InferenceConfig,
    ModelParams,
    RemoteParams,
)
from local_common import MAX_NEW_TOKENS, number_prompts  # noqa: E402

STORE = 200 * 1024 * 1024


def _write_rows(path: Path, texts: list[str]) -> None:
    with path.open("w") as fh:
        for text in texts:
            fh.write(json.dumps({"messages": [{"role": "user", "content": text}]}) + "\n")


def _one_process(cfg: InferenceConfig, output: Path) -> tuple[float, Any]:
    from infermux.engines.registry import build_engine

    assert cfg.input_path is not None
    engine = build_engine(cfg)
    try:
        t0 = time.perf_counter()
        report = asyncio.run(engine.run_file(cfg.input_path, str(output), fingerprint=cfg.fingerprint()))
        return time.perf_counter() - t0, report
    finally:
        engine.close()


def _on_ray(cfg: InferenceConfig) -> tuple[float, Any]:
    from infermux.distributed import run_on_ray

    t0 = time.perf_counter()
    report = run_on_ray(cfg)
    return time.perf_counter() - t0, report


def r1(tmp: Path, rows: int, workers: int, replicas: int) -> None:
    data = tmp / "r1.jsonl"
    _write_rows(data, [f"row {i}" for i in range(rows)])
    with stub_server.spawn("--latency-ms", "20") as url:
        base = InferenceConfig(
            model=ModelParams(model_name="stub"),
            engine="REMOTE",
            remote_params=RemoteParams(api_url=url + "/v1", num_workers=workers),
            input_path=str(data),
        )
        single_out = tmp / "r1-single.jsonl"
        single_s, _ = _one_process(base, single_out)
        ray_cfg = base.model_copy(
            update={
                "output_path": str(tmp / "r1-ray.jsonl"),
                "distributed": DistributedParams(replicas=replicas, num_cpus=0.5),
            }
        )
        ray_s, report = _on_ray(ray_cfg)
    same = single_out.read_bytes() == Path(str(ray_cfg.output_path)).read_bytes()
    ideal = rows * 0.020 / workers
    print(f"R1 REMOTE {rows} rows, 20 ms, {workers} workers in all")
    print(f"  one process        {single_s:7.2f} s   ({single_s / ideal:.2f}x ideal {ideal:.2f} s)")
    print(
        f"  {replicas} replicas on Ray  {ray_s:7.2f} s   ({ray_s / ideal:.2f}x ideal)  per replica {report.per_replica}"
    )
    steady = ray_s - report.startup_s
    print(f"  ratio Ray / one process: {ray_s / single_s:.2f}x   same output bytes: {same}")
    print(f"  without replica start-up ({report.startup_s:.1f} s): {steady:.2f} s, {steady / single_s:.2f}x")


def r2(tmp: Path) -> None:
    prompts = number_prompts()
    data = tmp / "r2.jsonl"
    _write_rows(data, prompts)
    generation = GenerationParams(max_new_tokens=MAX_NEW_TOKENS, temperature=0.0)

    def config(threads: int) -> InferenceConfig:
        return InferenceConfig(
            model=ModelParams(model_name="smollm2-135m-instruct", model_kwargs={"n_threads": threads}),
            generation=generation,
            input_path=str(data),
        )

    single_s, single = _one_process(config(2), tmp / "r2-single.jsonl")
    ray_cfg = config(1).model_copy(
        update={
            "output_path": str(tmp / "r2-ray.jsonl"),
            "distributed": DistributedParams(replicas=2, num_cpus=1, rows_per_call=len(prompts) // 4),
        }
    )
    ray_s, report = _on_ray(ray_cfg)
    print(f"R2 LLAMACPP {len(prompts)} prompts x <= {MAX_NEW_TOKENS} tokens")
    print(f"  1 process x 2 threads   {single.completion_tokens / single_s:7.1f} tokens/s  ({single_s:.1f} s)")
    print(f"  2 replicas x 1 thread   {report.completion_tokens / ray_s:7.1f} tokens/s  ({ray_s:.1f} s, incl. loading)")


def r3(tmp: Path, rows: int, workers: int, replicas: int) -> None:
    data = tmp / "r3.jsonl"
    with data.open("w") as fh:
        for i in range(rows):
            fh.write(f'{{"messages": [{{"role": "user", "content": "row {i}"}}]}}\n')
    with stub_server.spawn() as url:
        config = tmp / "r3.yaml"
        config.write_text(
            "model: {model_name: stub}\nengine: REMOTE\n"
            f"remote_params: {{api_url: '{url}/v1', num_workers: {workers}}}\n"
            f"distributed: {{replicas: {replicas}, num_cpus: 0.5, object_store_memory: {STORE}}}\n"
        )
        cmd = [sys.executable, __file__, "--driver-child", str(config), str(data), str(tmp / "r3-out.jsonl")]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
    if out.returncode != 0:
        print(out.stderr[-2000:])
        raise SystemExit(f"R3 driver failed ({out.returncode})")
    peak_kb = int(out.stdout.strip().splitlines()[-1])
    print(
        f"R3 REMOTE {rows} rows, {replicas} replicas: driver peak RSS {peak_kb / 1024:.0f} MB "
        f"({wall:.0f} s, {rows / wall:.0f} rows/s including Ray's start and the input check)"
    )


def _driver_child(config: str, data: str, output: str) -> None:
    """Run the job as ``infermux infer --ray`` does, then print this process's peak RSS (kB)."""
    from infermux.cli.infer_cmd import run_infer

    try:
        run_infer(
            config=config, overrides=[], input_path=data, output_path=output, interactive=False,
            system_prompt=None, images=[], engine=None, strict=False, log_level="warning", ray="",
        )  # fmt: skip
    finally:
        with open("/proc/self/status") as fh:
            peak = next(line.split()[1] for line in fh if line.startswith("VmHWM:"))
        print(peak, flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--driver-child":
        _driver_child(*sys.argv[2:5])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="R1,R2,R3")
    p.add_argument("--r1-rows", type=int, default=20_000)
    p.add_argument("--r3-rows", type=int, default=1_000_000)
    p.add_argument("--workers", type=int, default=64)
    p.add_argument("--replicas", type=int, default=4)
    args = p.parse_args()
    only = {s.strip().upper() for s in args.only.split(",")}
    print(f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as name:
        tmp = Path(name)
        if only & {"R1", "R2"}:
            import ray

            from infermux.distributed.driver import _quiet_default_auth_note

            _quiet_default_auth_note()  # as `infermux infer --ray` does when it starts its own cluster
            ray.init(num_cpus=4, object_store_memory=STORE, include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=False)  # fmt: skip
            try:
                if "R1" in only:
                    r1(tmp, args.r1_rows, args.workers, args.replicas)
                if "R2" in only:
                    r2(tmp)
            finally:
                ray.shutdown()
        if "R3" in only:
            r3(tmp, args.r3_rows, args.workers, args.replicas)


if __name__ == "__main__":
    main()
