"""Settings of a job sharded over a cluster (``distributed:``); none of them change what a row answers."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from infermux.configs._base import ConfigModel

__all__ = ["DistributedParams"]


class DistributedParams(ConfigModel):
    """The ``distributed:`` section: run the batch job on a Ray cluster (``infermux[ray]``).

    Left out of the job's fingerprint: a job started on one machine resumes on a cluster and back.
    """

    backend: Literal["ray"] = "ray"
    """Cluster framework. Only ``ray`` today."""
    address: str | None = None
    """Cluster to join: ``HOST:PORT`` of a head started with ``ray start --head``, or ``auto``. Null: the
    ``RAY_ADDRESS`` environment variable if set, else a one-machine cluster started for the job."""
    replicas: int | None = Field(default=None, ge=1)
    """Engine copies, each a Ray actor that loads the model once. Null: as many as the cluster holds
    (its GPUs / ``num_gpus`` when GPUs are asked for, else its CPUs / ``num_cpus``); a remote engine never
    gets more replicas than ``remote_params.num_workers``."""
    num_cpus: float = Field(default=1.0, ge=0)
    """CPUs reserved per replica (Ray resources; fractions allowed)."""
    num_gpus: float = Field(default=0.0, ge=0)
    """GPUs reserved per replica. A VLLM replica with ``tensor_parallel_size`` × ``pipeline_parallel_size``
    above 1 reserves that many GPU bundles instead, and vLLM runs its workers on Ray."""
    rows_per_call: int | None = Field(default=None, ge=1)
    """Rows sent to a replica in one call. Null: the engine's batch size for local engines, 8 rows per
    concurrent request for remote ones."""
    calls_in_flight: int = Field(default=2, ge=1, le=64)
    """Calls queued per replica, so a replica never waits for the driver between calls."""
    max_resends: int = Field(default=3, ge=0)
    """How often the rows of a call are sent again after their replica died (actor crash, node lost);
    beyond that they are recorded as failed rows (kind ``replica_lost``) and a rerun retries them."""
    object_store_memory: int | None = Field(default=None, ge=78_643_200)
    """Bytes of Ray's object store when the job starts its own one-machine cluster (null: Ray's default)."""
