"""What each replica gets: its config (a share of the remote budget, the API key resolved once on the
driver, vLLM's executor) and its Ray resources. Pure functions: no Ray import, easy to test."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from infermux.configs.distributed_params import DistributedParams
from infermux.configs.endpoint_params import EndpointParams
from infermux.configs.engine_type import InferenceEngineType
from infermux.configs.inference_config import InferenceConfig
from infermux.configs.remote_params import RemoteParams

__all__ = ["ReplicaPlan", "plan_replicas", "share", "share_endpoints"]

logger = logging.getLogger("infermux.distributed")


@dataclass
class ReplicaPlan:
    """One replica: the config its engine is built from, and what Ray reserves for it."""

    index: int
    config: InferenceConfig
    num_cpus: float
    num_gpus: float
    #: vLLM tensor × pipeline parallel size; above 1 the replica gets a placement group of that many bundles.
    gpu_bundles: int = 0
    options: dict[str, Any] = field(default_factory=dict)


def share(total: int, parts: int, index: int) -> int:
    """``index``'s part when ``total`` is split into ``parts`` near-equal whole parts (they sum to ``total``)."""
    return total // parts + (1 if index < total % parts else 0)


def _remote_budget(cfg: InferenceConfig) -> tuple[int, RemoteParams] | None:
    """The job-wide concurrency of a remote engine and its params with the API key resolved."""
    from infermux.engines.registry import engine_class
    from infermux.engines.remote.base import RemoteEngine

    cls = engine_class(cfg.resolved_engine())
    if not issubclass(cls, RemoteEngine):
        return None  # a local engine, or one without an HTTP worker budget (BEDROCK: boto3's own pool)
    params = cfg.remote_params or RemoteParams()
    info = cls.provider_info()
    total = params.num_workers if "num_workers" in params.model_fields_set else info.workers
    # Workers on other machines may not have the driver's environment: resolve the key here once. It travels
    # to the replicas inside the pickled config (Ray's object store), never on a command line or in a log.
    key = params.resolve_api_key(info.key_env)
    update: dict[str, Any] = {"num_workers": total}
    if key is not None:
        update["api_key"] = SecretStr(key)
    if params.endpoints:
        endpoints = _whole_endpoints(params, total)
        update["endpoints"] = endpoints
        total = sum(e.num_workers or 0 for e in endpoints)
    return total, params.model_copy(update=update)


_PER_MINUTE = ("requests_per_minute", "input_tokens_per_minute", "output_tokens_per_minute")


def _whole_endpoints(params: RemoteParams, workers: int) -> list[EndpointParams]:
    """``params.endpoints`` with every budget written out (an endpoint's own, else ``params``' value) and
    each ``api_key_env`` read here, on the driver, into the endpoint's (secret) key."""
    out = []
    for item in params.endpoints or ():
        update: dict[str, Any] = {"num_workers": item.num_workers or workers}
        for name in _PER_MINUTE:
            update[name] = getattr(item, name) or getattr(params, name)
        if item.api_key is None and item.api_key_env and os.environ.get(item.api_key_env):
            update["api_key"] = SecretStr(os.environ[item.api_key_env])
        out.append(item.model_copy(update=update))
    return out


def share_endpoints(endpoints: list[EndpointParams], parts: int, index: int) -> list[EndpointParams]:
    """Replica ``index``'s part of every endpoint's workers and per-minute budgets among ``parts`` replicas:
    an endpoint's workers are dealt out in turn, starting where the previous endpoint's stopped (so each
    replica gets ``share(total, parts, index)`` workers in all), and its per-minute budgets are split among
    the replicas that got some of its workers. Endpoints with no worker for this replica are left out."""
    out = []
    start = 0
    for item in endpoints:
        workers = item.num_workers or 1
        turn = (index - start) % parts
        start += workers
        users = min(parts, workers)
        if turn >= users:
            continue
        update: dict[str, Any] = {"num_workers": share(workers, parts, turn)}
        for name in _PER_MINUTE:
            value = getattr(item, name)
            if value is not None:
                update[name] = max(1, share(value, users, turn))
        out.append(item.model_copy(update=update))
    return out


def _remote_share(budget: tuple[int, RemoteParams], parts: int, index: int) -> RemoteParams:
    """Replica ``index``'s remote params: its share of the workers (at least one) and of each endpoint."""
    total, params = budget
    update: dict[str, Any] = {"num_workers": max(1, share(total, parts, index))}
    if params.endpoints:  # each endpoint's budgets are shared, not each replica given the whole
        update["endpoints"] = share_endpoints(params.endpoints, parts, index)
    return params.model_copy(update=update)


def _vllm_parallel(cfg: InferenceConfig) -> int:
    kwargs = cfg.model.model_kwargs
    return int(kwargs.get("tensor_parallel_size", 1)) * int(kwargs.get("pipeline_parallel_size", 1))


def plan_replicas(cfg: InferenceConfig, dist: DistributedParams, cluster: dict[str, float]) -> list[ReplicaPlan]:
    """The replicas of a job on a cluster with ``cluster`` resources (``ray.cluster_resources()``)."""
    parallel = _vllm_parallel(cfg) if cfg.resolved_engine() == InferenceEngineType.VLLM else 1
    gpus_each = float(parallel) if parallel > 1 else dist.num_gpus
    count = dist.replicas
    if count is None:
        if gpus_each > 0:
            count = max(1, math.floor(cluster.get("GPU", 0.0) / gpus_each))
        elif dist.num_cpus > 0:
            count = max(1, math.floor(cluster.get("CPU", 1.0) / dist.num_cpus))
        else:
            count = 1
    remote = _remote_budget(cfg)
    if remote is not None and remote[0] < count:
        logger.warning(
            "%d replicas asked for but remote_params.num_workers is %d: using %d replicas so the job's "
            "concurrency stays %d.",
            count,
            remote[0],
            remote[0],
            remote[0],
        )
        count = remote[0]
    fallbacks = [_remote_budget(InferenceConfig(engine=f.engine, model=f.model, remote_params=f.remote_params))
                 for f in cfg.fallbacks]  # fmt: skip
    plans = []
    for index in range(count):
        config = cfg.model_copy(deep=True)
        if remote is not None:
            config.remote_params = _remote_share(remote, count, index)
        if fallbacks:  # a fallback's budget is shared too (at least one worker per replica), its key read here
            config.fallbacks = [
                f if budget is None else f.model_copy(update={"remote_params": _remote_share(budget, count, index)})
                for f, budget in zip(config.fallbacks, fallbacks, strict=True)
            ]
        engine = config.resolved_engine()
        if engine == InferenceEngineType.LLAMACPP and dist.num_cpus >= 1 and "n_threads" not in cfg.model.model_kwargs:
            # llama.cpp would take every core of the machine per replica: give it the CPUs Ray reserved.
            kwargs = {**config.model.model_kwargs, "n_threads": int(dist.num_cpus)}
            config.model = config.model.model_copy(update={"model_kwargs": kwargs})
        bundles = 0
        if parallel > 1:
            bundles = parallel
            kwargs = dict(config.model.model_kwargs)
            kwargs.setdefault("distributed_executor_backend", "ray")
            config.model = config.model.model_copy(update={"model_kwargs": kwargs})
        plans.append(
            ReplicaPlan(
                index=index,
                config=config,
                num_cpus=dist.num_cpus,
                num_gpus=0.0 if parallel > 1 else dist.num_gpus,
                gpu_bundles=bundles,
            )
        )
    return plans
