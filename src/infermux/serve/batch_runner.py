"""Each Batch API batch is an infermux job on the served engine, resumed when the server starts again.

A batch goes ``validating`` (its input file checked line by line, :mod:`.batch_lines`) -> ``in_progress``
-> ``finalizing`` -> ``completed``; or ``failed`` (a bad line), ``cancelling`` -> ``cancelled``, ``expired``
(its 24-hour window passed). Its requests run through the job layer's durable loop
(:func:`infermux.jobs.loop.run_job`): each answered row is appended to the job's partial file under the
batch's folder in ``--batch-dir`` as it finishes, under the job's lock. Requests with the same generation
settings make one job (most batches are one). When the server starts, every batch that was not finished
goes on: the loop skips the rows its partial files hold, so no request is answered twice, and a batch
killed while cancelling or finalizing ends as it would have. Batch rows reach the engine through a
:class:`~infermux.serve.priority.BatchLane`: interactive requests keep priority.

A request whose body the chat route would refuse fails alone, with that route's error (in the error
file); a row the engine fails is recorded as failed (a failed row is data, never the batch's end).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infermux.errors import ErrorKind, RowError
from infermux.jobs.files import JobFiles
from infermux.jobs.loop import BatchReport, run_job
from infermux.jobs.rows import InputRow
from infermux.serve import answers, wire
from infermux.serve.batch_lines import Line, failure_line, missing_line, read_lines, success_line
from infermux.serve.batch_store import Store, new_id, write_json
from infermux.serve.priority import BatchLane
from infermux.types import Conversation, Message, Role

if TYPE_CHECKING:
    from infermux.configs.generation_params import GenerationParams
    from infermux.serve.app import ServerState

__all__ = ["ACTIVE", "TERMINAL", "BatchRunner"]

logger = logging.getLogger("infermux.serve")

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
ACTIVE = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
WINDOW_SECONDS = 24 * 3600
_SAVE_EVERY = 1.0  # seconds between writes of a running batch's counts
_INPUT_KINDS = frozenset({ErrorKind.INVALID_INPUT, ErrorKind.UNSUPPORTED_INPUT})


@dataclass
class _Group:
    """The requests of one batch that share generation settings: one job."""

    generation: GenerationParams
    files: JobFiles
    rows: list[InputRow] = field(default_factory=list)
    settled: dict[str, RowError] = field(default_factory=dict)


@dataclass
class _Plan:
    lines: list[Line]
    errors: list[dict[str, Any]]
    groups: list[_Group] = field(default_factory=list)
    refused: dict[str, wire.ApiError] = field(default_factory=dict)


def derived_file_id(batch_id: str, kind: str) -> str:
    """The id of a batch's output or error file: the same when it is written again after a restart."""
    return "file-" + hashlib.sha256(f"{batch_id}:{kind}".encode()).hexdigest()[:24]


class BatchRunner:
    def __init__(self, state: ServerState, store: Store, width: int) -> None:
        self.state = state
        self.store = store
        self.width = width
        self.lane: BatchLane | None = None
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.live: dict[str, dict[str, Any]] = {}  # the objects of running batches (counts change)
        self._saved: dict[str, float] = {}

    # ---------------------------------------------------------------- life
    async def start(self) -> None:
        """Go on with every batch not finished (the server stopped or was killed during it)."""
        self.lane = BatchLane(self.state.engine, self.state.priority, self.state.batcher, self.width)
        for obj in self.store.batches():
            if obj.get("status") in ACTIVE:
                logger.info("batch %s (%s): resuming", obj["id"], obj["status"])
                self._spawn(obj, self._run(obj))

    async def stop(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, obj: dict[str, Any], work: Any) -> None:
        self.live[obj["id"]] = obj
        task = asyncio.create_task(work)
        self.tasks[obj["id"]] = task

        def done(_: asyncio.Task[None]) -> None:
            if self.tasks.get(obj["id"]) is task:
                del self.tasks[obj["id"]]
                self.live.pop(obj["id"], None)

        task.add_done_callback(done)

    # -------------------------------------------------------------- the API
    def get(self, batch_id: str) -> dict[str, Any] | None:
        return self.live.get(batch_id) or self.store.batch(batch_id)

    def all(self) -> list[dict[str, Any]]:
        """Every batch, newest first."""
        return [self.live.get(obj["id"], obj) for obj in reversed(self.store.batches())]

    async def create(
        self, input_file_id: str, endpoint: str, window: str, metadata: dict[str, str] | None
    ) -> dict[str, Any]:
        now = int(time.time())
        batch_id = new_id("batch_")
        obj: dict[str, Any] = {
            "id": batch_id, "object": "batch", "endpoint": endpoint, "model": self.state.served_model,
            "errors": None, "input_file_id": input_file_id, "completion_window": window, "status": "validating",
            "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": None,
            "expires_at": now + WINDOW_SECONDS, "finalizing_at": None, "completed_at": None, "failed_at": None,
            "expired_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": metadata,
        }  # fmt: skip
        source, kept = self.store.data_path(input_file_id), self.store.work_dir(batch_id) / "input.jsonl"
        await asyncio.to_thread(_keep, source, kept)  # the batch's own input: deleting the file later is harmless
        # The generation defaults the batch was submitted under: a restart with another config does not change
        # its answers, nor answer again the rows already answered.
        settings = {"defaults": self.state.defaults.model_dump(mode="json"), "preset": self.state.preset}
        write_json(kept.with_name("settings.json"), settings)
        self.store.save_batch(obj)
        self._spawn(obj, self._run(obj))
        return obj

    def cancel(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Start cancelling ``obj`` (a batch not finished): rows answered so far go to its output file."""
        obj.update(status="cancelling", cancelling_at=int(time.time()))
        self.store.save_batch(obj)
        running = self.tasks.get(obj["id"])
        self._spawn(obj, self._cancel(obj, running))
        return obj

    async def _cancel(self, obj: dict[str, Any], running: asyncio.Task[None] | None) -> None:
        if running is not None:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
        await self._run(obj)

    # ------------------------------------------------------------ the work
    async def _run(self, obj: dict[str, Any]) -> None:
        try:
            plan = await asyncio.to_thread(self._plan, obj)
            if plan.errors and obj["status"] != "cancelling":
                self._save(
                    obj, status="failed", failed_at=int(time.time()), errors={"object": "list", "data": plan.errors}
                )
                await asyncio.to_thread(self._drop_work, obj["id"])
                return
            if obj["status"] == "validating":
                counts = {"total": len(plan.lines), "completed": 0, "failed": 0}
                self._save(obj, status="in_progress", in_progress_at=int(time.time()), request_counts=counts)
            if obj["status"] == "in_progress":
                try:
                    await asyncio.wait_for(self._run_groups(obj, plan), max(0.0, obj["expires_at"] - time.time()))
                except asyncio.TimeoutError:
                    await self._finish(obj, plan, "expired")
                    return
                self._save(obj, status="finalizing", finalizing_at=int(time.time()))
            await self._finish(obj, plan, "cancelled" if obj["status"] == "cancelling" else "completed")
        except asyncio.CancelledError:
            self.store.save_batch(obj, sync=False)  # the counts so far; the job's files hold the rows
            raise
        except Exception as exc:  # a bug or a disk problem: the batch fails with the reason, the server stays up
            logger.error("batch %s failed: %s", obj["id"], self.state.redact(repr(exc)))
            logger.debug("traceback", exc_info=True)
            error = {"code": "server_error", "message": self.state.redact(str(exc))[:1000], "param": None, "line": None}
            self._save(obj, status="failed", failed_at=int(time.time()), errors={"object": "list", "data": [error]})

    def _save(self, obj: dict[str, Any], *, sync: bool = True, **changes: Any) -> None:
        obj.update(changes)
        self.store.save_batch(obj, sync=sync)
        self._saved[obj["id"]] = time.monotonic()

    def _plan(self, obj: dict[str, Any]) -> _Plan:
        """The batch's requests as rows, grouped by generation settings (the same on every restart)."""
        work = self.store.work_dir(obj["id"])
        source = work / "input.jsonl"
        if not source.exists():
            error = {"code": "file_not_found", "message": "The batch's input is gone.", "param": None, "line": None}
            return _Plan([], [error])
        lines, errors = read_lines(source, obj["endpoint"], self.state.served_model)
        plan = _Plan(lines, errors)
        if errors:
            return plan
        state, groups = self.state, {}  # type: ignore[var-annotated]
        defaults, preset = _settings(work / "settings.json", state.defaults, state.preset)
        placeholder = Conversation(messages=[Message(role=Role.USER, content="")])
        for line in lines:
            try:
                body = {**line.body, "stream": False}
                body.pop("stream_options", None)
                prepared = state.prepare(body, defaults, preset)  # the chat route's checks, the engine's own
                key, generation, conversation = (
                    prepared.generation.model_dump_json(),
                    prepared.generation,
                    prepared.conversation,
                )
            except wire.ApiError as exc:
                plan.refused[line.custom_id] = exc
                key, generation, conversation = "refused", defaults, placeholder
            group = groups.get(key)
            if group is None:
                fingerprint = hashlib.sha256(f"{obj['id']}|{key}".encode()).hexdigest()[:16]
                group = groups[key] = _Group(generation, JobFiles(work / f"job-{len(groups)}.jsonl", fingerprint))
            conversation = conversation.replace(conversation_id=line.custom_id)
            # The row's place in its group's job (not in the batch): the job's files index rows by it.
            group.rows.append(InputRow(len(group.rows), line.number, line.custom_id, conversation))
            refusal = plan.refused.get(line.custom_id)
            if refusal is not None:
                settled = RowError(kind=refusal.code or refusal.type, message=refusal.message, status=refusal.status)
                group.settled[line.custom_id] = settled
        plan.groups = list(groups.values())
        return plan

    async def _run_groups(self, obj: dict[str, Any], plan: _Plan) -> None:
        assert self.lane is not None
        ledger_path = self.store.work_dir(obj["id"]) / "jobs.json"
        ledger: dict[str, list[int]] = _read_ledger(ledger_path)  # finished jobs: name -> [completed, failed]
        for group in plan.groups:
            name = group.files.output.name
            if name in ledger:
                continue
            before = [sum(v[0] for v in ledger.values()), sum(v[1] for v in ledger.values())]

            def progress(report: BatchReport, before: list[int] = before) -> None:
                counts = obj["request_counts"]
                counts["completed"] = before[0] + report.resumed + report.done
                counts["failed"] = before[1] + report.failed
                if time.monotonic() - self._saved.get(obj["id"], 0.0) > _SAVE_EVERY:
                    self._save(obj, sync=False)  # counts only (a restart counts again): no fsync on the loop

            rows = group.rows
            report = await run_job(self.lane, lambda rows=rows: rows, [r.row_id for r in rows],  # type: ignore[arg-type,misc]
                                   group.generation, files=group.files, on_row=self._count_row, on_progress=progress,
                                   settled=group.settled)  # fmt: skip
            ledger[name] = [report.resumed + report.done, report.failed]
            write_json(ledger_path, ledger)

    def _count_row(self, row: InputRow, result: Conversation | RowError) -> None:
        metrics = self.state.metrics
        if isinstance(result, RowError):
            metrics.batch_rows["failed"] += 1
            return
        metrics.batch_rows["completed"] += 1
        usage = result.usage
        if usage is not None:
            metrics.prompt_tokens += usage.prompt_tokens or 0
            metrics.completion_tokens += usage.completion_tokens or 0

    async def _finish(self, obj: dict[str, Any], plan: _Plan, status: str) -> None:
        """Write the output and error files from the jobs' files, then mark the batch ``status``."""
        code = {"cancelled": "batch_cancelled", "expired": "batch_expired"}.get(status, "batch_failed")
        written = await asyncio.to_thread(self._write_results, obj, plan, code)
        counts = obj["request_counts"]
        counts.update(completed=written[0], failed=written[1])
        if status == "completed":
            counts["total"] = written[0] + written[1]
        obj[f"{status}_at"] = int(time.time())
        self._save(obj, status=status, output_file_id=written[2], error_file_id=written[3])
        logger.info("batch %s %s: %d completed, %d failed", obj["id"], status, written[0], written[1])
        await asyncio.to_thread(self._drop_work, obj["id"])

    def _drop_work(self, batch_id: str) -> None:
        """Remove a finished batch's job folder: its results are in its files now (the state says so first)."""
        shutil.rmtree(self.store.batches_dir / batch_id, ignore_errors=True)

    def _write_results(self, obj: dict[str, Any], plan: _Plan, code: str) -> tuple[int, int, str | None, str | None]:
        batch_id = obj["id"]
        out_tmp = self.store.files_dir / f".{batch_id}.output.tmp"
        err_tmp = self.store.files_dir / f".{batch_id}.errors.tmp"
        done = failed = 0
        created = obj.get("in_progress_at") or obj["created_at"]
        with out_tmp.open("wb") as out, err_tmp.open("wb") as err:
            for group in plan.groups:
                ids = [row.row_id for row in group.rows]
                answers = _answers(group.files, ids)
                errors = _errors(group.files)
                for row in group.rows:
                    cid = row.row_id
                    if cid in answers:
                        body = self._completion(batch_id, cid, answers[cid], created)
                        out.write(_line(success_line(batch_id, cid, body)))
                        done += 1
                        continue
                    failed += 1
                    if cid in plan.refused:
                        exc = plan.refused[cid]
                        err.write(_line(failure_line(batch_id, cid, exc.status, exc.body())))
                    elif cid in errors:
                        status, body = _error_reply(errors[cid], self.state.redact)
                        err.write(_line(failure_line(batch_id, cid, status, body)))
                    else:
                        err.write(_line(missing_line(batch_id, cid, code, _MISSING[code])))
            for fh in (out, err):
                fh.flush()
                os.fsync(fh.fileno())
        file_ids: list[str | None] = []
        for tmp, kind in ((out_tmp, "output"), (err_tmp, "error")):
            if tmp.stat().st_size == 0:
                tmp.unlink()
                file_ids.append(None)
                continue
            file_id = derived_file_id(batch_id, kind)
            self.store.add_file(tmp, f"{batch_id}_{kind}.jsonl", "batch_output", file_id=file_id)
            file_ids.append(file_id)
        return done, failed, file_ids[0], file_ids[1]

    def _completion(self, batch_id: str, custom_id: str, answer: Conversation, created: int) -> dict[str, Any]:
        cid = "chatcmpl-" + hashlib.sha256(f"{batch_id}\0{custom_id}".encode("utf-8", "surrogatepass")).hexdigest()[:24]
        message = answer.last_message
        metadata = dict(answer.metadata)
        return answers.completion(
            cid, self.state.served_model, created, message.text, metadata, answers.tool_calls_of(message)
        )


_MISSING = {
    "batch_cancelled": "The batch was cancelled before this request ran.",
    "batch_expired": "This request could not be executed before the completion window expired.",
    "batch_failed": "This request was not run.",
}


def _keep(source: Path, kept: Path) -> None:
    try:
        os.link(source, kept)
    except OSError:
        shutil.copyfile(source, kept)


def _settings(
    path: Path, defaults: GenerationParams, preset: dict[str, float]
) -> tuple[GenerationParams, dict[str, float]]:
    """The generation defaults and preset a batch was submitted under (the server's own when not recorded)."""
    from infermux.configs.generation_params import GenerationParams

    try:
        data = json.loads(path.read_bytes())
        return GenerationParams.model_validate(data["defaults"]), dict(data["preset"])
    except (OSError, ValueError, KeyError, TypeError):
        return defaults, preset


def _line(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n"


def _read_ledger(path: Path) -> dict[str, list[int]]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _answers(files: JobFiles, ids: list[str]) -> dict[str, Conversation]:
    """The recorded answers of one job: from its partial file while unfinished, else from its output."""
    if files.partial.exists():
        return dict(files.recorded(ids))
    found: dict[str, Conversation] = {}
    with contextlib.suppress(FileNotFoundError), files.output.open("rb") as fh:
        for raw in fh:
            conversation = Conversation.model_validate_json(raw)
            if conversation.conversation_id is not None:
                found[conversation.conversation_id] = conversation
    return found


def _errors(files: JobFiles) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    with contextlib.suppress(FileNotFoundError), files.errors.open("rb") as fh:
        for raw in fh:
            with contextlib.suppress(ValueError):
                record = json.loads(raw)
                if isinstance(record, dict) and "id" in record:
                    found[record["id"]] = record
    return found


def _error_reply(record: dict[str, Any], redact: Any) -> tuple[int, dict[str, Any]]:
    """The status and OpenAI error body the chat route would have answered for a failed row."""
    message, kind, status = (
        redact(str(record.get("message") or "")),
        str(record.get("kind") or ""),
        record.get("status"),
    )
    if kind in _INPUT_KINDS:
        return 400, wire.error_body(message, "invalid_request_error", None, kind)
    if status == 429:
        return 429, wire.error_body(message, "rate_limit_error", None, "rate_limit_exceeded")
    if isinstance(status, int) and 400 <= status < 500:
        return 400, wire.error_body(message, "invalid_request_error", None, "upstream_rejected")
    return 500, wire.error_body(f"The engine failed on this request: {message}", "server_error", None, kind or None)
