"""Jobs: input rows, job files, the durable run loop, the fingerprint, and the facade the CLI calls.

``from infermux.jobs import run_config_job, run_job_file, infer, ainfer, prepare_input, check_output_path`` (see
:mod:`infermux.jobs.api` for their shapes). Imported lazily: ``import infermux.jobs`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BatchReport", "ainfer", "check_output_path", "infer", "prepare_input", "run_config_job", "run_job_file"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'infermux.jobs' has no attribute {name!r}")
    from infermux.jobs import api

    return getattr(api, name)
