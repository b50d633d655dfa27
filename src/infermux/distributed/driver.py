"""The driver of a job on a Ray cluster: the job's single writer.

The driver reads the input, sends batches of rows to the replicas (Ray actors, one engine each) and
writes every answer itself, to the same ``.partial.jsonl`` and ``.errors.jsonl`` files, with the same
row ids and fingerprint, as the one-machine job loop. Exactly once follows from three facts:

- rows already in the partial file (this fingerprint) are never sent: a killed driver resumes;
- a batch whose replica died (actor crash, node lost) is sent again, to the restarted replica;
- a row whose id was already written is dropped, should a batch's answers ever arrive twice.

Ray restarts dead replicas (``max_restarts=-1``) but does not retry their calls (``max_task_retries=0``):
the driver does, so it can count the resends and give up on a batch that kills every replica it meets
(its rows become failed rows of kind ``replica_lost``, retried by a rerun like any failed row).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from infermux.configs.distributed_params import DistributedParams
from infermux.configs.inference_config import InferenceConfig
from infermux.distributed.plan import ReplicaPlan, plan_replicas
from infermux.distributed.replica import Replica, ReplicaStartError
from infermux.errors import EngineUnavailableError, ErrorKind, InfermuxError, OutputError, RowError, install_hint
from infermux.jobs.api import check_output_path, prepare_input
from infermux.jobs.files import JobFiles
from infermux.jobs.finished import finished_rows, reopen
from infermux.jobs.loop import BatchReport, record_result
from infermux.jobs.rows import InputRow, iter_rows, tools_fingerprint
from infermux.jobs.table_out import job_files
from infermux.jobs.tables import TableColumns
from infermux.types import Conversation, Tool

__all__ = ["ClusterReport", "run_on_ray"]

logger = logging.getLogger("infermux.distributed")

#: Rows per call for remote engines, per concurrent request of the replica.
_REMOTE_ROWS_PER_WORKER = 8


@dataclass
class ClusterReport(BatchReport):
    """A :class:`BatchReport` plus what the cluster did."""

    replicas: list[dict[str, Any]] = field(default_factory=list)
    per_replica: dict[int, int] = field(default_factory=dict)
    resent_rows: int = 0
    duplicates_dropped: int = 0
    #: Seconds from the job's start until every replica had built its engine.
    startup_s: float = 0.0


@dataclass
class _Batch:
    rows: list[InputRow]
    attempts: int = 0


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise EngineUnavailableError(
            f"--ray needs Ray, which is not installed. Install it with: {install_hint('ray')}"
        ) from None
    return ray


def _check_engine(cfg: InferenceConfig, *, tools: bool) -> None:
    """What the engine cannot honour, said here once (replicas log to their own nodes), before Ray starts."""
    from infermux.engines.capabilities import check_params
    from infermux.engines.registry import engine_class

    cls = engine_class(cfg.resolved_engine())
    check_params(cls.__name__, cls.capabilities, cfg.generation, cfg.model, strict=cfg.strict, tools=tools)
    from infermux.engines.remote.base import RemoteEngine

    if issubclass(cls, RemoteEngine):  # an HTTP engine is cheap to build: a missing URL or key shows here
        from infermux.engines.registry import build_engine

        build_engine(cfg).close()


def _connect(ray: Any, dist: DistributedParams) -> bool:
    """Join the cluster (or start a one-machine one); True when this call started Ray."""
    if ray.is_initialized():
        return False
    address = dist.address or os.environ.get("RAY_ADDRESS")
    quiet = not logging.getLogger("infermux").isEnabledFor(logging.DEBUG)
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=not quiet)
        else:
            _quiet_default_auth_note()
            ray.init(
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=not quiet,
                object_store_memory=dist.object_store_memory,
            )
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise InfermuxError(
            f"could not join {where}: {exc}. Start the head with `ray start --head` and pass its "
            "address (--ray HOST:PORT or distributed.address)."
        ) from None
    return True


class _DropNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


def _quiet_default_auth_note() -> None:
    """Ray 2.60 starts a new local cluster with token authentication and logs a WARNING saying so on
    every ``ray.init()``: a note about its default, not a problem, so it is dropped. Ray's warning that
    authentication is *disabled* (``RAY_AUTH_MODE=disabled``, or a cluster without a token) still shows."""
    auth_logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _DropNote) for f in auth_logger.filters):
        auth_logger.addFilter(_DropNote())


def _start_replica(replica_class: Any, plan: ReplicaPlan, dist: DistributedParams, tools: list[Tool] | None) -> Any:
    options: dict[str, Any] = {
        "num_cpus": plan.num_cpus,
        "num_gpus": plan.num_gpus,
        "max_restarts": -1,
        "max_task_retries": 0,
        "max_concurrency": dist.calls_in_flight + 2,
    }
    if plan.gpu_bundles:
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        # vLLM's own Ray workers take the GPUs of this group (tensor × pipeline parallel); the replica
        # that drives them only needs a CPU of its first bundle.
        group = placement_group([{"GPU": 1.0, "CPU": 1.0}] * plan.gpu_bundles, strategy="PACK")
        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            group, placement_group_capture_child_tasks=True
        )
        options["num_cpus"] = min(plan.num_cpus, 1.0)
    else:
        options["scheduling_strategy"] = "SPREAD"
    return replica_class.options(**options).remote(plan.config, plan.index, tools)


def _batches(rows: Iterable[InputRow], size: int) -> Iterator[list[InputRow]]:
    batch: list[InputRow] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class _Writer:
    """Writes each row once, counts it, and keeps the report.

    ``written[i]`` is 1 once the row at input position ``i`` is in the partial or errors file: one byte a
    row, where a set of ids would hold a second copy of every id (a 1,000,000-row job: 1 MB, not ~80 MB).
    """

    def __init__(self, files: JobFiles, report: ClusterReport, written: bytearray) -> None:
        self.files, self.report, self.written = files, report, written

    def record(self, replica: int, row: InputRow, result: Conversation | RowError) -> None:
        if self.written[row.index]:
            self.report.duplicates_dropped += 1
            return
        self.written[row.index] = 1
        record_result(self.report, self.files, row, result)
        self.report.per_replica[replica] = self.report.per_replica.get(replica, 0) + 1


def run_on_ray(
    cfg: InferenceConfig,
    *,
    row_ids: Sequence[str] | None = None,
    on_progress: Callable[[ClusterReport], None] | None = None,
    tools: list[Tool] | None = None,
    offers_tools: bool = False,
) -> ClusterReport:
    """Run ``cfg``'s batch job (``input_path`` → ``output_path``) on a Ray cluster; resumable.

    ``tools`` go to every row without its own (``--tools``) and count for resume, as in a one-machine job.
    ``row_ids`` (with ``offers_tools``: whether a row has tools) is what ``prepare_input`` returned when
    the caller already checked the input."""
    if not cfg.input_path or not cfg.output_path:
        raise OutputError("a job on a cluster needs --input_path and --output_path (answers go to a file).")
    dist = cfg.distributed or DistributedParams()
    if row_ids is None:
        offered: list[bool] = []
        row_ids = prepare_input(cfg.input_path, offered_tools=offered, columns=TableColumns.of(cfg))
        offers_tools = any(offered)
    ids = row_ids
    check_output_path(cfg.output_path, cfg.input_path)
    fingerprint = tools_fingerprint(cfg.fingerprint(), tools) if tools else cfg.fingerprint()
    files = job_files(
        cfg.output_path, fingerprint, job_dir=cfg.job_dir, input_path=cfg.input_path,
        columns=TableColumns.of(cfg), output_format_name=cfg.output_format,
    )  # fmt: skip
    _check_engine(cfg, tools=bool(tools) or offers_tools)
    files.check_writable()
    with files.locked():  # one writer per output, before Ray starts
        return _run_locked(cfg, dist, files, ids, on_progress, tools)


def _run_locked(
    cfg: InferenceConfig,
    dist: DistributedParams,
    files: JobFiles,
    ids: Sequence[str],
    on_progress: Callable[[ClusterReport], None] | None,
    tools: list[Tool] | None,
) -> ClusterReport:
    assert cfg.input_path is not None
    input_path = cfg.input_path

    def rows() -> Iterator[InputRow]:  # as the driver records them (replicas add the default tools)
        return iter_rows(input_path, TableColumns.of(cfg))

    if finished_rows(files, rows) == len(ids):
        report = ClusterReport(total=len(ids), output_path=files.destination)
        report.resumed, report.already_finished = len(ids), True
        return report
    reopen(files)
    ray = _import_ray()
    started_ray = _connect(ray, dist)
    try:
        plans = plan_replicas(cfg, dist, ray.cluster_resources())
        report = ClusterReport(total=len(ids), output_path=files.destination, partial_path=str(files.partial))
        written = _already_written(files, ids, rows)
        report.resumed = sum(written)
        if report.resumed < len(ids):
            _run(ray, cfg, dist, plans, files, report, written, on_progress, tools)
        files.assemble(ids, complete=report.failed == 0)
        if report.failed:
            report.errors_path = str(files.errors)
        return report
    finally:
        if started_ray:
            ray.shutdown()


def _already_written(files: JobFiles, ids: Sequence[str], rows: Callable[[], Iterator[InputRow]]) -> bytearray:
    """One byte per input row: 1 for rows a previous run finished under this fingerprint (and not edited since)."""
    done = files.load_done(ids, rows=rows)
    return bytearray(1 if position in done else 0 for position in range(len(ids)))


def _run(
    ray: Any,
    cfg: InferenceConfig,
    dist: DistributedParams,
    plans: list[ReplicaPlan],
    files: JobFiles,
    report: ClusterReport,
    written: bytearray,
    on_progress: Callable[[ClusterReport], None] | None,
    tools: list[Tool] | None,
) -> None:
    replica_class = ray.remote(Replica)  # one actor class for all: Ray exports its definition once
    actors = [_start_replica(replica_class, plan, dist, tools) for plan in plans]  # all start at once
    try:
        report.replicas = _wait_ready(ray, actors)
        report.startup_s = report.elapsed
        for info in report.replicas:
            if "error" in info:
                kind, message = info["error"]
                raise ReplicaStartError(f"replica {info['index']} could not start its engine ({kind}): {message}")
        report.per_replica = {i: 0 for i in range(len(actors))}
        assert cfg.input_path is not None
        todo = (row for row in iter_rows(cfg.input_path, TableColumns.of(cfg)) if not written[row.index])
        files.check_writable()  # makes the job folder (nothing is written before the replicas are up)
        files.open()
        try:
            _drive(
                ray,
                actors,
                _batches(todo, _rows_per_call(dist, report.replicas)),
                dist,
                _Writer(files, report, written),
                on_progress,
            )
        finally:
            files.close()
    finally:
        _stop(ray, actors)


def _wait_ready(ray: Any, actors: list[Any]) -> list[dict[str, Any]]:
    """Each replica's ``ready()`` answer; a replica that cannot even start is a user-facing error."""
    from ray.exceptions import RayError

    try:
        infos: list[dict[str, Any]] = ray.get([actor.ready.remote() for actor in actors])
    except RayError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        cause = next((line for line in reversed(lines) if "Error" in line), lines[-1] if lines else type(exc).__name__)
        raise ReplicaStartError(
            f"a replica could not start: {cause}. Every node needs the same Python and the same infermux "
            f"version with the engine's extra ({install_hint('ray')} plus the engine's own)."
        ) from None
    return infos


def _rows_per_call(dist: DistributedParams, infos: list[dict[str, Any]]) -> int:
    if dist.rows_per_call is not None:
        return dist.rows_per_call
    first = infos[0]
    if first.get("remote"):
        return max(1, _REMOTE_ROWS_PER_WORKER * max(i["max_concurrency"] for i in infos))
    return int(first["chunk_size"])


def _drive(
    ray: Any,
    actors: list[Any],
    fresh: Iterator[list[InputRow]],
    dist: DistributedParams,
    writer: _Writer,
    on_progress: Callable[[ClusterReport], None] | None,
) -> None:
    from ray.exceptions import RayError

    report = writer.report
    pending: dict[Any, tuple[int, _Batch]] = {}
    resend: deque[_Batch] = deque()

    def submit(replica: int, *, fresh_only: bool = False) -> None:
        batch = resend.popleft() if resend and not fresh_only else None
        if batch is None:
            rows = next(fresh, None)
            if rows is None:
                return
            batch = _Batch(rows)
        pending[actors[replica].infer.remote(batch.rows)] = (replica, batch)

    def _lost(replica: int, batch: _Batch, exc: Exception) -> None:
        batch.attempts += 1
        text = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {text[0] if text else ''}"
        if batch.attempts > dist.max_resends:
            logger.warning(
                "a batch was lost %d times (last on replica %d: %s); its rows are failed",
                batch.attempts,
                replica,
                reason,
            )
            error = RowError(
                kind=ErrorKind.REPLICA_LOST,
                message=f"the replica running this row died {batch.attempts} times ({reason})",
                retryable=True,
            )
            for row in batch.rows:
                writer.record(replica, row, error)
        else:
            logger.warning(
                "replica %d lost a batch of %d rows (%s); sending it again", replica, len(batch.rows), reason
            )
            report.resent_rows += len(batch.rows)
            resend.append(batch)

    for _ in range(dist.calls_in_flight):
        for replica in range(len(actors)):
            submit(replica)
    while pending or resend:
        if not pending:  # only lost batches are left: hand them out (restarted replicas queue them)
            for replica in range(len(actors)):
                submit(replica)
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
        for ref in ready:
            replica, batch = pending.pop(ref)
            try:
                results = ray.get(ref)
            except RayError as exc:
                _lost(replica, batch, exc)
                # Fresh rows for the restarting replica (they wait for it); the lost batch goes to the
                # next replica that answers, so it is not stuck behind the restart.
                submit(replica, fresh_only=True)
                continue
            for row, result in zip(batch.rows, results, strict=True):
                writer.record(replica, row, result)
            submit(replica)
        if on_progress is not None:
            on_progress(report)


def _stop(ray: Any, actors: list[Any]) -> None:
    closing = [actor.close.remote() for actor in actors]
    try:
        ray.wait(closing, num_returns=len(closing), timeout=30)
    except Exception:  # a replica that is already gone has nothing to close
        logger.debug("closing replicas failed", exc_info=True)
    for actor in actors:
        try:
            ray.kill(actor)
        except Exception:
            logger.debug("killing a replica failed", exc_info=True)
