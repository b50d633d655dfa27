"""Provider batch APIs as engine methods, written once for every protocol that has one.

A protocol module (OpenAI's Batch API in :mod:`.openai.batch_api`, Anthropic's Message Batches in
:mod:`.anthropic_batch`) provides the coroutines ``asubmit(engine, input_path, output_path, generation,
fingerprint)``, ``astatus(engine, output_path)`` and ``afetch(engine, input_path, output_path, fingerprint)``,
and where the provider has them ``acancel(engine, output_path)`` and ``alist(engine, limit)``. An engine
class mixes in :class:`BatchJobsMixin` and names that module in ``batch_protocol``; the CLI (``infermux
batch``) reads :attr:`Capabilities.batch_api` and calls these methods.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

from infermux.errors import RowError

if TYPE_CHECKING:
    from infermux.jobs.rows import InputRow
    from infermux.types import Conversation

__all__ = ["BatchFetchReport", "BatchJobsMixin", "CancellableBatchJobsMixin", "record_batch_results"]


@dataclasses.dataclass
class BatchFetchReport:
    """What ``fetch`` wrote: ``done`` rows in the output, ``failed`` in the errors file, ``pending`` not back yet."""

    done: int
    failed: int
    pending: int
    output_path: str
    errors_path: str | None
    settled: dict[str, RowError] = dataclasses.field(default_factory=dict)
    """Failed rows not worth answering online (the request itself is wrong), by row id."""


def record_batch_results(
    input_path: str,
    output_path: str,
    fingerprint: str,
    row_ids: list[str],
    result_for: Callable[[InputRow], Conversation | RowError | None],
) -> BatchFetchReport:
    """Write each row's fetched batch result (``result_for``: the answer, a failure, or None while pending)
    into the job's files, like an online job would; rows already done are kept; the output is assembled
    in input order (complete only when nothing failed or is pending)."""
    from infermux.jobs.files import JobFiles

    files = JobFiles(output_path, fingerprint)
    files.check_writable()
    with files.locked():  # one writer per output
        return _record(files, input_path, row_ids, result_for)


def _record(
    files: Any,
    input_path: str,
    row_ids: list[str],
    result_for: Callable[[InputRow], Conversation | RowError | None],
) -> BatchFetchReport:
    from infermux.jobs.rows import iter_rows

    files.reopen_finished()  # a finished job fetched again: its rows are done
    done_before = files.load_done(rows=lambda: iter_rows(input_path))
    done, failed, pending = len(done_before & set(row_ids)), 0, 0
    settled: dict[str, RowError] = {}
    files.open()
    try:
        for row in iter_rows(input_path):
            if row.row_id in done_before:
                continue
            result = result_for(row)
            if result is None:
                pending += 1
            elif isinstance(result, RowError):
                failed += 1
                files.append_failed(row, result)
                if not result.retryable:
                    settled[row.row_id] = result
            else:
                done += 1
                files.append_done(row, result)
    finally:
        files.close()
    files.assemble(row_ids, complete=failed == 0 and pending == 0)
    errors = str(files.errors) if files.errors.exists() else None
    return BatchFetchReport(done, failed, pending, str(files.output), errors, settled)


class BatchJobsMixin:
    """``submit_batch``, ``batch_status`` and ``fetch_batch`` over the coroutines of ``batch_protocol``."""

    supports_batch_api: ClassVar[bool] = True
    batch_protocol: ClassVar[ModuleType]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # The declared flag the CLI reads: ``Capabilities.batch_api`` follows ``supports_batch_api``.
        super().__init_subclass__(**kwargs)
        caps = getattr(cls, "capabilities", None)
        if caps is not None and caps.batch_api != cls.supports_batch_api:
            cls.capabilities = dataclasses.replace(caps, batch_api=cls.supports_batch_api)  # type: ignore[attr-defined]

    def _fingerprint_for_batch(self, fingerprint: str | None) -> str:
        from infermux.jobs.api import engine_fingerprint

        engine: Any = self
        return fingerprint or engine_fingerprint(engine, engine.generation_params)

    def submit_batch(self, input_path: str, output_path: str, *, fingerprint: str | None = None) -> Any:
        """Create the provider batches of ``input_path`` (resumable; a batch is never created twice)."""
        from infermux.jobs.sync import run_sync

        engine: Any = self
        fp = self._fingerprint_for_batch(fingerprint)
        protocol = self.batch_protocol
        return run_sync(lambda: protocol.asubmit(engine, input_path, output_path, engine.generation_params, fp))

    def batch_status(self, output_path: str) -> Any:
        """Poll every batch of the job recorded beside ``output_path``."""
        from infermux.jobs.sync import run_sync

        return run_sync(lambda: self.batch_protocol.astatus(self, output_path))

    def fetch_batch(self, input_path: str, output_path: str, *, fingerprint: str | None = None) -> Any:
        """Download finished results into ``output_path`` (failed rows into its errors file)."""
        from infermux.jobs.sync import run_sync

        fp = self._fingerprint_for_batch(fingerprint)
        return run_sync(lambda: self.batch_protocol.afetch(self, input_path, output_path, fp))


class CancellableBatchJobsMixin(BatchJobsMixin):
    """Also ``cancel_batch`` and ``list_batches``, for protocols whose API has them (``hasattr`` tells the
    CLI which engines can)."""

    def cancel_batch(self, output_path: str) -> Any:
        """Ask every unfinished batch of the job to stop."""
        from infermux.jobs.sync import run_sync

        return run_sync(lambda: self.batch_protocol.acancel(self, output_path))

    def list_batches(self, limit: int = 20) -> list[dict[str, Any]]:
        """The account's most recent batches."""
        from infermux.jobs.sync import run_sync

        return run_sync(lambda: self.batch_protocol.alist(self, limit))  # type: ignore[no-any-return]
