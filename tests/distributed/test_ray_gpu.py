"""vLLM on a Ray cluster with GPUs: one replica per GPU, and tensor parallelism across two GPUs with
Ray as vLLM's executor. Skipped without CUDA (``gpu``); needs the ``vllm`` extra with a CUDA build."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infermux.configs import DistributedParams, GenerationParams, InferenceConfig, ModelParams
from infermux.distributed import run_on_ray
from infermux.engines.registry import build_engine

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.gpu, pytest.mark.slow]

PROMPTS = ["Name a colour.", "What is 2+2?", "Say hello.", "Name a fruit.", "Count to three.", "Name a city."]


def _gpus() -> int:
    import torch

    return int(torch.cuda.device_count())


@pytest.fixture(scope="module")
def gpu_cluster() -> Iterator[None]:
    ray.init(include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


def _job(tmp: Path, model_kwargs: dict[str, Any], dist: DistributedParams) -> InferenceConfig:
    data = tmp / "in.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": p}]}) + "\n" for p in PROMPTS))
    return InferenceConfig(
        model=ModelParams(
            model_name="smollm2-135m-instruct", model_kwargs={"gpu_memory_utilization": 0.3, **model_kwargs}
        ),
        engine="VLLM",
        generation=GenerationParams(max_new_tokens=16, temperature=0.0),
        input_path=str(data),
        output_path=str(tmp / "out.jsonl"),
        distributed=dist,
    )


def _answers(path: str | None) -> list[str]:
    assert path is not None
    return [json.loads(line)["messages"][-1]["content"] for line in Path(path).read_text().splitlines()]


def test_vllm_one_replica_per_gpu_equals_a_single_process_run(gpu_cluster: None, tmp_path: Path) -> None:
    cfg = _job(tmp_path, {}, DistributedParams(num_gpus=1, rows_per_call=2))
    report = run_on_ray(cfg)
    assert report.ok and len(report.replicas) == _gpus()
    single = tmp_path / "single.jsonl"
    engine = build_engine(cfg)
    try:
        asyncio.run(engine.run_file(str(cfg.input_path), str(single), fingerprint=cfg.fingerprint()))
    finally:
        engine.close()
    assert _answers(cfg.output_path) == _answers(str(single))


def test_vllm_tensor_parallel_replica_runs_its_workers_on_ray(gpu_cluster: None, tmp_path: Path) -> None:
    if _gpus() < 2:
        pytest.skip("tensor parallelism needs two GPUs")
    cfg = _job(tmp_path, {"tensor_parallel_size": 2}, DistributedParams(replicas=1))
    report = run_on_ray(cfg)
    assert report.ok and report.done == len(PROMPTS)
