"""The ``distributed:`` section and the replica plan (no Ray needed), and the CLI's --ray errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from infermux.configs import DistributedParams, InferenceConfig, ModelParams, RemoteParams, load_config
from infermux.distributed.plan import plan_replicas, share
from infermux.errors import ConfigError
from tests.conftest import run_cli

REMOTE = {"model": ModelParams(model_name="stub"), "engine": "REMOTE"}


def test_section_loads_with_line_numbers_and_suggestions(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("model: {model_name: m}\ndistributed:\n  replicas: 3\n  num_gpus: 1\n")
    cfg = load_config(str(path), [("distributed.address", "10.0.0.1:6379")])
    assert cfg.distributed == DistributedParams(replicas=3, num_gpus=1, address="10.0.0.1:6379")
    path.write_text("model: {model_name: m}\ndistributed:\n  replica: 3\n")
    with pytest.raises(ConfigError, match=r"job.yaml:3.*replicas"):
        load_config(str(path), [])
    path.write_text("model: {model_name: m}\ndistributed:\n  replicas: 0\n")
    with pytest.raises(ConfigError, match=r"job.yaml:3"):
        load_config(str(path), [])
    path.write_text("model: {model_name: m}\ndistributed: {backend: dask}\n")
    with pytest.raises(ConfigError, match="ray"):
        load_config(str(path), [])


def test_the_section_leaves_the_fingerprint_alone() -> None:
    """A job started on one machine resumes on a cluster, and back."""
    plain = InferenceConfig(**REMOTE)
    sharded = InferenceConfig(**REMOTE, distributed=DistributedParams(replicas=8, address="auto"))
    assert plain.fingerprint() == sharded.fingerprint()


@pytest.mark.parametrize(("total", "parts", "expected"), [(10, 4, [3, 3, 2, 2]), (8, 4, [2] * 4), (3, 1, [3])])
def test_share_splits_a_budget_exactly(total: int, parts: int, expected: list[int]) -> None:
    assert [share(total, parts, i) for i in range(parts)] == expected


def test_remote_replicas_share_the_job_concurrency_and_get_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-driver-env")
    cfg = InferenceConfig(
        model=ModelParams(model_name="gpt-x"),
        engine="OPENAI",
        remote_params=RemoteParams(num_workers=10),
        distributed=DistributedParams(replicas=4),
    )
    plans = plan_replicas(cfg, DistributedParams(replicas=4), {"CPU": 2.0})
    assert [p.config.remote_params.num_workers for p in plans if p.config.remote_params] == [3, 3, 2, 2]
    for plan in plans:
        assert plan.config.remote_params is not None and plan.config.remote_params.api_key is not None
        assert plan.config.remote_params.api_key.get_secret_value() == "sk-from-the-driver-env"
        assert "sk-from" not in repr(plan.config)  # still a secret
        assert plan.config.fingerprint() == cfg.fingerprint()


def test_remote_replicas_never_outnumber_the_workers(caplog: pytest.LogCaptureFixture) -> None:
    cfg = InferenceConfig(**REMOTE, remote_params=RemoteParams(api_url="http://127.0.0.1:9", num_workers=2))
    plans = plan_replicas(cfg, DistributedParams(replicas=5), {"CPU": 8.0})
    assert len(plans) == 2 and "num_workers is 2" in caplog.text


def test_default_replica_count_follows_the_cluster() -> None:
    cfg = InferenceConfig(model=ModelParams(model_name="smollm2-135m-instruct"))
    assert len(plan_replicas(cfg, DistributedParams(num_cpus=1), {"CPU": 6.0})) == 6
    assert len(plan_replicas(cfg, DistributedParams(num_gpus=1), {"CPU": 64.0, "GPU": 8.0})) == 8
    # Engines with no default remote budget (REMOTE asks 8 workers unless told) cap the count too.
    remote = InferenceConfig(**REMOTE, remote_params=RemoteParams(api_url="http://127.0.0.1:9"))
    assert len(plan_replicas(remote, DistributedParams(num_cpus=0.5), {"CPU": 64.0})) == 8


def test_vllm_parallel_replicas_get_gpu_bundles_and_ray_as_executor() -> None:
    cfg = InferenceConfig(
        model=ModelParams(model_name="/models/llama", model_kwargs={"tensor_parallel_size": 2}), engine="VLLM"
    )
    plans = plan_replicas(cfg, DistributedParams(), {"CPU": 32.0, "GPU": 8.0})
    assert len(plans) == 4
    assert all(p.gpu_bundles == 2 and p.num_gpus == 0 for p in plans)
    assert plans[0].config.model.model_kwargs["distributed_executor_backend"] == "ray"


def test_importing_the_package_does_not_import_ray() -> None:
    code = "import infermux.distributed, infermux.distributed.plan, sys; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_ray_errors_are_user_errors(tmp_path: Path) -> None:
    chat = run_cli("infer", "-i", "--ray")
    assert chat.returncode == 2 and "--ray runs batch jobs" in chat.stderr and "Traceback" not in chat.stderr
    data = tmp_path / "in.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    no_output = run_cli("infer", "--input_path", str(data), "--ray", "--engine", "REMOTE")
    assert no_output.returncode == 2 and "--output_path" in no_output.stderr, no_output.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text(textwrap.dedent('{"messages": []}\nnot json\n'))
    invalid = run_cli("infer", "--input_path", str(bad), "--output_path", str(tmp_path / "o.jsonl"), "--ray")
    assert invalid.returncode == 2 and "bad.jsonl:2" in invalid.stderr


def test_cli_ray_rejects_unsupported_parameters_before_ray_starts(tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    args = ["infer", "--input_path", str(data), "--output_path", str(tmp_path / "o.jsonl"), "--ray"]
    strict = run_cli(*args, "--engine", "REMOTE", "--strict", "--generation.num_beams", "4")
    assert strict.returncode == 2 and "does not support" in strict.stderr and "num_beams" in strict.stderr
    assert list(tmp_path.iterdir()) == [data]


def test_llamacpp_replicas_use_the_cpus_ray_reserved_for_them() -> None:
    cfg = InferenceConfig(model=ModelParams(model_name="smollm2-135m-instruct"))
    plans = plan_replicas(cfg, DistributedParams(replicas=2, num_cpus=3), {"CPU": 8.0})
    assert [p.config.model.model_kwargs["n_threads"] for p in plans] == [3, 3]
    mine = InferenceConfig(model=ModelParams(model_name="smollm2-135m-instruct", model_kwargs={"n_threads": 1}))
    assert plan_replicas(mine, DistributedParams(replicas=1, num_cpus=3), {})[0].config.model.model_kwargs == {
        "n_threads": 1
    }


def test_cli_ray_remote_engine_without_url_fails_before_ray_starts(tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    args = ["infer", "--input_path", str(data), "--output_path", str(tmp_path / "o.jsonl"), "--ray"]
    res = run_cli(*args, "--engine", "REMOTE", "--model.model_name", "m")
    assert res.returncode == 2 and "api_url" in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_replicas_share_each_endpoints_workers_and_per_minute_budgets(monkeypatch: pytest.MonkeyPatch) -> None:
    from infermux.configs.endpoint_params import EndpointParams

    monkeypatch.setenv("NODE_B_KEY", "sk-node-b-from-the-driver")
    endpoints = [
        EndpointParams(url="http://a/v1", num_workers=5, requests_per_minute=600),
        EndpointParams(url="http://b/v1", num_workers=2, api_key_env="NODE_B_KEY"),
        EndpointParams(url="http://c/v1"),  # remote_params' 3 workers and 90 requests per minute
    ]
    remote = RemoteParams(endpoints=endpoints, num_workers=3, requests_per_minute=90)
    cfg = InferenceConfig(model=ModelParams(model_name="m"), engine="REMOTE_VLLM", remote_params=remote)
    plans = plan_replicas(cfg, DistributedParams(replicas=3), {"CPU": 8.0})
    shares = [{e.url: e for e in (p.config.remote_params.endpoints or [])} for p in plans if p.config.remote_params]
    for url, workers, rpm in (("http://a/v1", 5, 600), ("http://b/v1", 2, None), ("http://c/v1", 3, 90)):
        parts = [s[url] for s in shares if url in s]
        assert sum(e.num_workers or 0 for e in parts) == workers  # the endpoint's own concurrency, not 3x
        if rpm is not None:
            assert sum(e.requests_per_minute or 0 for e in parts) == rpm
    # 10 workers in all, dealt out evenly: 4, 3, 3
    assert sorted(sum(e.num_workers or 0 for e in s.values()) for s in shares) == [3, 3, 4]
    keyed = [s["http://b/v1"] for s in shares if "http://b/v1" in s]
    assert keyed and all(e.api_key is not None for e in keyed)
    assert all(p.config.fingerprint() == cfg.fingerprint() for p in plans)
    assert "sk-node-b" not in repr(plans)


def test_replicas_share_a_fallbacks_budget_and_get_its_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from infermux.configs.fallback_params import FallbackConfig

    monkeypatch.setenv("OPENAI_API_KEY", "sk-fallback-from-the-driver")
    fallback = FallbackConfig(engine="OPENAI", model=ModelParams(model_name="gpt-4o-mini"),
                              remote_params=RemoteParams(num_workers=6))  # fmt: skip
    cfg = InferenceConfig(model=ModelParams(model_name="m"), engine="REMOTE_VLLM", fallbacks=[fallback],
                          remote_params=RemoteParams(api_url="http://127.0.0.1:9", num_workers=8))  # fmt: skip
    plans = plan_replicas(cfg, DistributedParams(replicas=4), {"CPU": 8.0})
    params = [p.config.fallbacks[0].remote_params for p in plans]
    assert [p.num_workers for p in params if p is not None] == [2, 2, 1, 1]
    assert all(p is not None and p.api_key is not None for p in params)
    assert all(p.config.fingerprint() == cfg.fingerprint() for p in plans)
    assert "sk-fallback" not in repr(plans)
