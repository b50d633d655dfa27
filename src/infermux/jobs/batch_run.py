"""``infermux batch run``: a provider batch job that finishes.

Submit the input to the engine's batch API (OpenAI's Batch API, Anthropic's Message Batches), poll
until every batch ended, fetch the results into the output, then answer ONLINE (the ordinary job loop,
same config, same output) the rows the batch did not answer: expired, canceled, or errored for a
reason worth retrying. Rows the provider refused as invalid are recorded as failed, not resent.

Every step is resumable: the batch record beside the output means a rerun never submits twice, the
fetch skips rows already in the partial file, and the online phase runs only rows still missing, so
each row is answered exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from infermux.errors import InputError
from infermux.jobs import provider_batch
from infermux.jobs.loop import BatchReport

if TYPE_CHECKING:
    from infermux.configs.inference_config import InferenceConfig
    from infermux.engines.base import InferenceEngine
    from infermux.jobs.batch_state import BatchJobState

__all__ = ["BatchRunReport", "run_batch_job"]


@dataclass
class BatchRunReport:
    batch_done: int
    batch_failed: int
    online: BatchReport | None
    output_path: str

    @property
    def failed(self) -> int:
        return self.online.failed if self.online is not None else self.batch_failed


def run_batch_job(
    engine: InferenceEngine,
    config: InferenceConfig,
    *,
    poll_interval: float = 30.0,
    on_status: Callable[[BatchJobState], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> BatchRunReport:
    """Submit, wait, fetch, finish online (see the module docstring); ``engine`` has a batch client. The
    job's lock is held throughout."""
    if not config.input_path or not config.output_path:
        raise InputError("batch run needs --input_path and --output_path.")
    provider_batch.client_for(engine)  # no batch API: a clear error before anything is read
    fingerprint = config.fingerprint()
    from infermux.jobs.files import JobFiles

    with JobFiles(config.output_path, fingerprint, job_dir=config.job_dir).locked():  # one writer per output
        return _run_locked(engine, config, fingerprint, poll_interval, on_status, sleep)


def _run_locked(
    engine: Any,
    config: InferenceConfig,
    fingerprint: str,
    poll_interval: float,
    on_status: Callable[[Any], None] | None,
    sleep: Callable[[float], None],
) -> BatchRunReport:
    from infermux.jobs.api import run_job_file
    from infermux.jobs.options import JobOptions
    from infermux.jobs.sync import run_sync

    assert config.input_path is not None and config.output_path is not None
    from infermux.jobs.tables import TableColumns

    columns = TableColumns.of(config)
    state = provider_batch.submit(
        engine, config.input_path, config.output_path, fingerprint=fingerprint, columns=columns
    )
    if on_status is not None:
        on_status(state)
    while not state.all_terminal:
        sleep(poll_interval)
        state = provider_batch.status(engine, config.output_path)
        if on_status is not None:
            on_status(state)
    fetched = provider_batch.fetch(
        engine, config.input_path, config.output_path, fingerprint=fingerprint, columns=columns,
        output_format=config.output_format,
    )  # fmt: skip
    report = BatchRunReport(fetched.done, fetched.failed, None, fetched.output_path)
    if fetched.failed:
        options = JobOptions.from_config(config)
        try:
            report.online = run_sync(
                lambda: run_job_file(
                    engine,
                    str(config.input_path),
                    config.output_path,
                    generation=config.generation,
                    fingerprint=fingerprint,
                    options=options,
                    settled=fetched.settled,
                    columns=columns,
                    output_format=config.output_format,
                )
            )
        finally:
            options.close()
    return report
