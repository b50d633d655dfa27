"""Jobs on a real Ray cluster: a head and a second node on this machine (``ray.cluster_utils.Cluster``).

Every test here is multi-node, so all are ``slow``. The cluster is small on purpose (logical CPUs, an
80 MB object store, no dashboard): the machine running the suite has two cores.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infermux.configs import DistributedParams, GenerationParams, InferenceConfig, ModelParams, RemoteParams
from infermux.distributed import run_on_ray
from infermux.engines.registry import build_engine
from infermux.jobs.rows import validate_file
from tests.servers import stub_server

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STORE = 80 * 1024 * 1024


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from ray.cluster_utils import Cluster

    node_args = {"num_cpus": 4, "object_store_memory": STORE}
    c = Cluster(initialize_head=True, head_node_args={**node_args, "include_dashboard": False})
    c.add_node(**node_args)
    ray.init(address=c.address, logging_level=logging.WARNING, log_to_driver=False)
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def stub() -> Iterator[str]:
    with stub_server("--latency-ms", "20") as url:
        yield url


def _stub(url: str, route: str, method: str = "GET") -> Any:
    req = urllib.request.Request(url + route, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def write_input(path: Path, n: int) -> Path:
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"messages": [{"role": "user", "content": f"row {i}"}]}) + "\n")
    return path


def remote_config(url: str, tmp: Path, n: int, *, replicas: int = 4, workers: int = 8, **dist: Any) -> InferenceConfig:
    return InferenceConfig(
        model=ModelParams(model_name="stub"),
        engine="REMOTE",
        remote_params=RemoteParams(api_url=url + "/v1", num_workers=workers, retry_backoff_base=0.05),
        input_path=str(write_input(tmp / "in.jsonl", n)),
        output_path=str(tmp / "out.jsonl"),
        distributed=DistributedParams(replicas=replicas, num_cpus=0.5, **dist),
    )


def single_process(cfg: InferenceConfig, tmp: Path) -> bytes:
    """The one-machine job's output file for the same config."""
    import asyncio

    assert cfg.input_path is not None
    out = tmp / "single.jsonl"
    engine = build_engine(cfg)
    try:
        asyncio.run(engine.run_file(cfg.input_path, str(out), fingerprint=cfg.fingerprint()))
    finally:
        engine.close()
    return out.read_bytes()


def test_remote_4_replicas_equal_a_single_process_run(cluster: Any, stub: str, tmp_path: Path) -> None:
    cfg = remote_config(stub, tmp_path, 200)
    report = run_on_ray(cfg)
    assert report.ok and report.done == 200
    assert len(report.replicas) == 4 and all(count > 0 for count in report.per_replica.values())
    assert len({info["node"] for info in report.replicas}) == 2  # spread over both nodes
    assert report.completion_tokens > 0
    assert Path(cfg.output_path or "").read_bytes() == single_process(cfg, tmp_path)
    assert not Path(str(cfg.output_path) + ".partial.jsonl").exists()
