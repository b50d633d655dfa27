"""Batch jobs sharded over a Ray cluster (``infermux[ray]``); see docs/distributed.md.

Ray is imported only when a job runs: this package's import is light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from infermux.distributed.driver import ClusterReport

__all__ = ["run_on_ray"]


def run_on_ray(*args: Any, **kwargs: Any) -> ClusterReport:
    """Run a config's batch job on a Ray cluster: see :func:`infermux.distributed.driver.run_on_ray`."""
    from infermux.distributed.driver import run_on_ray as run

    return run(*args, **kwargs)
