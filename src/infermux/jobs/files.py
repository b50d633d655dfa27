"""The files of one job: ``<output>.partial.jsonl`` (every finished row, flushed per row, tagged with its
row id and the config fingerprint), ``<output>.errors.jsonl`` (failed rows) and the output itself,
assembled in input order and moved into place with ``os.replace``.

The partial and errors files sit beside the output, or in ``job_dir`` when given. An output URI
(``s3://...``, see :mod:`infermux.jobs.storage`) is assembled in that local job folder and then uploaded.

A torn last line (``kill -9`` during a write) or a line written under another fingerprint is dropped
when the job resumes. Each line also carries a digest of what decides the row's answer (its messages and
tools, :func:`~infermux.jobs.options.request_digest`): a row edited since it was answered (same id, other
content) is answered again, its earlier answer moved to the stale file.

The state kept in memory is per input position, never per row id: one 8-byte offset per row (where its
answer is in the partial file, :class:`DoneRows`), so that a job of millions of rows stays small. Row ids
are matched to positions through :class:`RowPositions`, only when a partial file is read back.

A local job that finishes leaves ``<output>.done``, the finished-job index (:mod:`infermux.jobs.finished`):
a rerun of the same job on the same input sends nothing. A writer holds the job's lock
(:mod:`infermux.jobs.lock`) while it writes, and a failure to write these files stops the job
(:class:`JobWriteError`): rows recorded before it are kept.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic_core import to_json

from infermux.errors import OutputError, RowError
from infermux.jobs.options import row_digest
from infermux.jobs.positions import Digests, DoneRows, RowPositions
from infermux.jobs.rows import InputRow
from infermux.text import scrub_surrogates
from infermux.types import Conversation

if TYPE_CHECKING:
    from infermux.jobs.finished import IndexWriter

__all__ = ["DoneRows", "JobFiles", "JobWriteError", "RowPositions", "fsync_path"]

logger = logging.getLogger("infermux.jobs")

Rows = Callable[[], Iterable[InputRow]]

_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file cannot grow any larger (file system or process file-size limit)",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


class JobWriteError(OutputError):
    """The job's own files cannot be written: the job stops (rows recorded before are kept)."""


def write_failed(path: Path | str, exc: OSError) -> JobWriteError:
    reason = _REASONS.get(exc.errno or 0) or exc.strerror or str(exc)
    return JobWriteError(
        f"{path}: cannot write the job's files ({reason}). The job stopped sending rows; every row recorded "
        "so far is kept. Fix the cause (free space, permissions), then rerun the same command to finish the job."
    )


class JobFiles:
    """The output, partial and errors files of one job, and the resume state read from them."""

    #: Whether the output holds each row's whole record (JSONL), so that a finished job whose input was
    #: edited can turn it back into the partial file (:func:`infermux.jobs.finished.reopen`).
    output_holds_records: ClassVar[bool] = True
    #: Whether the output is a folder (a dataset folder, :mod:`infermux.jobs.dataset_out`) rather than a file.
    output_is_folder: ClassVar[bool] = False

    def __init__(
        self, output_path: str | os.PathLike[str], fingerprint: str, *, job_dir: str | os.PathLike[str] | None = None
    ) -> None:
        from infermux.jobs import storage

        #: The output URI (``s3://...``) when the output is uploaded; ``output`` is then its local copy.
        self.remote: str | None = None
        #: Where the output goes, as shown to the user.
        self.destination = str(output_path)
        if job_dir:
            storage.check_job_dir(job_dir)
        if storage.is_uri(output_path):
            self.remote = str(output_path)
            self.destination = storage.shown(self.remote)
            folder = storage.job_folder(self.remote, job_dir)
            self.output = folder / (self.remote.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "output")
        else:
            self.output = Path(output_path)
            folder = Path(job_dir) if job_dir else self.output.parent
        self.folder = folder
        self._own_folder = self.remote is not None and not job_dir
        self.partial = folder / (self.output.name + ".partial.jsonl")
        self.errors = folder / (self.output.name + ".errors.jsonl")
        #: Rows answered under an earlier config (another fingerprint), kept when a run with a new config
        #: starts: the same records as the partial file's.
        self.stale = folder / (self.output.name + ".stale.jsonl")
        self.stale_rows = 0
        #: The finished-job index, written when the job is complete (:mod:`infermux.jobs.finished`).
        self.index = folder / (self.output.name + ".done")
        self.lock_path = folder / (self.output.name + ".lock")
        #: Rows whose content changed since they were answered (found by the last :meth:`load_done`).
        self.changed_rows = 0
        self.fingerprint = fingerprint
        self._partial_fh: Any = None
        self._errors_fh: Any = None
        #: Where each input row's answer is in the partial file (set by :meth:`load_done`, kept up to date
        #: by :meth:`append_done`); None until then (:meth:`assemble` then reads the partial file).
        self.done: DoneRows | None = None
        self._end = 0  # the partial file's size while it is open

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold this job's lock while inside (one writer per output; see :mod:`infermux.jobs.lock`)."""
        from infermux.jobs.lock import job_lock

        if self.folder != self.output.parent or self.remote is not None:
            self.check_writable()  # the job folder must exist to hold the lock file
        with job_lock(self.lock_path, self.destination):
            yield
        if self._own_folder:  # the lock file was the last thing in a finished job's own folder
            self._remove_own_folder()

    def check_writable(self) -> None:
        if self.folder != self.output.parent or self.remote is not None:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(f"{self.folder}: cannot create the job folder ({exc.strerror}).") from None
            if not os.access(self.folder, os.W_OK):
                raise OutputError(f"{self.folder}: the job folder is not writable. Choose another job_dir.")
            if self.remote is not None:
                return
        parent = self.output.parent if str(self.output.parent) else Path(".")
        if self.output.is_dir() and not self.output_is_folder:
            raise OutputError(f"{self.output}: is a directory; --output_path must name a file.")
        if not parent.is_dir():
            raise OutputError(f"{parent}: output directory does not exist. Create it or choose another path.")
        if not os.access(parent, os.W_OK):
            raise OutputError(f"{parent}: output directory is not writable. Choose another --output_path.")

    def load_done(self, ids: Sequence[str], *, compact: bool = True, rows: Rows | None = None) -> DoneRows:
        """The rows of ``ids`` (the input's row ids, in order) already finished under this fingerprint, by
        position.

        With ``rows`` (the input rows), a recorded row whose content changed since it was answered (same
        id, another :func:`~infermux.jobs.options.request_digest`) is not done; ``changed_rows`` counts them.
        With ``compact`` the partial file is rewritten without torn lines and repeated rows, and rows
        answered under another fingerprint (the config changed since) or before their row was edited are
        moved to :attr:`stale` (appended), never dropped; ``stale_rows`` counts them. Without it (a dry run)
        nothing is written. The file is read as a stream: memory holds 8 bytes per row (24 while reading).
        """
        self.stale_rows = self.changed_rows = 0
        done = self.done = DoneRows(len(ids))
        if not self.partial.exists() or not self.partial.stat().st_size:
            return done
        where = RowPositions(ids)
        digests = Digests(len(ids))
        others: set[Any] = set()  # recorded ids the input does not have (kept in the partial file)
        dirty = False
        stale = 0
        with self.partial.open("rb") as fh:
            pos = 0
            for raw in fh:
                record = _parse_record(raw)
                if record is None:
                    dirty = True
                else:
                    rid = record["id"]
                    position = where.find(rid)
                    if (position in done) if position >= 0 else (rid in others):
                        dirty = True  # a repeated row: the first line wins
                    elif record.get("fp") != self.fingerprint:
                        dirty = True
                        stale += 1
                    elif position < 0:
                        others.add(rid)
                    else:
                        done.at[position] = pos
                        digests.put(position, str(record.get("rq") or ""))
                pos += len(raw)
        changed, shown = self._changed(done, digests, rows) if rows is not None and digests.any else (0, [])
        if changed:
            dirty = True
            self.changed_rows = changed
            logger.warning(
                "%d rows changed since they were answered (%s): they are answered again%s",
                changed,
                ", ".join(shown) + (", ..." if changed > 3 else ""),
                f"; their earlier answers are moved to {self.stale}" if compact else "",
            )
        if dirty and compact:
            try:
                self._compact(where, done, stale)
            except OSError as exc:
                raise write_failed(self.partial, exc) from None
        for position, offset in enumerate(done.at):
            if offset < -1:  # changed: answered again
                done.at[position] = -1
        return done

    @staticmethod
    def _changed(done: DoneRows, digests: Digests, rows: Rows) -> tuple[int, list[str]]:
        """Mark the recorded rows whose input content is now different (their offset ``o`` becomes
        ``-2 - o``); return how many, and the three smallest of their ids (for the warning)."""
        shown: list[str] = []
        count = 0
        at = done.at
        for row in rows():
            position = row.index
            if position in done:
                recorded = digests.get(position)
                if recorded and recorded != row_digest(row):
                    at[position] = -2 - at[position]
                    count += 1
                    bisect.insort(shown, row.row_id)
                    del shown[3:]
        return count, shown

    def _compact(self, where: RowPositions, done: DoneRows, other_config: int) -> None:
        """Rewrite the partial file with the lines :meth:`load_done` kept; append the others' lines (other
        config first, then changed rows) to the stale file; point ``done`` at the kept lines' new offsets."""
        at = done.at
        tmp = self.partial.with_name(self.partial.name + ".tmp")
        later = self.stale.with_name(self.stale.name + ".tmp")  # changed rows go after the other config's
        kept_others: set[Any] = set()
        moved = changed = 0
        with self.partial.open("rb") as fh, tmp.open("wb") as out, later.open("wb") as edited:
            stale_out: Any = None
            pos = new = 0
            for raw in fh:
                record = _parse_record(raw)
                keep = False
                to: Any = None
                if record is not None:
                    rid = record["id"]
                    position = where.find(rid)
                    if position >= 0:
                        first = at[position] if at[position] >= 0 else -2 - at[position]
                        if at[position] == pos:
                            keep = True
                            at[position] = new
                        elif at[position] == -2 - pos:
                            to = edited
                            changed += 1
                        elif (at[position] == -1 or first > pos) and record.get("fp") != self.fingerprint:
                            to = "stale"
                    elif rid not in kept_others:
                        if record.get("fp") != self.fingerprint:
                            to = "stale"
                        else:
                            keep = True
                            kept_others.add(rid)
                if keep:
                    out.write(raw)
                    new += len(raw)
                elif to is not None:
                    if to == "stale":
                        if stale_out is None:
                            stale_out = self.stale.open("ab")
                        to = stale_out
                        moved += 1
                    to.write(raw)
                pos += len(raw)
            if changed:
                edited.flush()
                if stale_out is None:
                    stale_out = self.stale.open("ab")
                with later.open("rb") as back:
                    shutil.copyfileobj(back, stale_out, 1 << 20)
            if stale_out is not None:
                stale_out.flush()
                os.fsync(stale_out.fileno())
                stale_out.close()
            out.flush()
            os.fsync(out.fileno())
        later.unlink()
        if moved or changed:
            self.stale_rows = moved + changed
            if other_config:
                logger.warning(
                    "%d rows were answered under a different config (model, generation or engine settings "
                    "changed): they are not reused, and were moved to %s",
                    other_config,
                    self.stale,
                )
        os.replace(tmp, self.partial)

    def reopen_finished(self) -> None:
        """Turn a finished job's output back into the partial file (see :func:`infermux.jobs.finished.reopen`)."""
        from infermux.jobs.finished import reopen

        reopen(self)

    def recorded(self, ids: Iterable[str]) -> Iterator[tuple[str, Conversation]]:
        """The recorded answers of ``ids`` (under this fingerprint), from the partial file."""
        wanted = set(ids)
        if not wanted or not self.partial.exists():
            return
        with self.partial.open("rb") as fh:
            for raw in fh:
                record = _parse_record(raw)
                if record is not None and record["id"] in wanted and record.get("fp") == self.fingerprint:
                    wanted.discard(record["id"])
                    yield record["id"], Conversation.model_validate_json(_conversation_bytes(raw))

    def recorded_at(self, partial: Any, position: int) -> Conversation:
        """The recorded answer of the finished row at ``position`` (``position in self.done``), read from
        ``partial`` (the partial file, open for reading)."""
        assert self.done is not None
        partial.seek(self.done.at[position])
        return Conversation.model_validate_json(_conversation_bytes(partial.readline()))

    def open(self) -> None:
        try:  # unbuffered: each row is one write, and a failed write leaves nothing behind to flush later
            self._partial_fh = self.partial.open("ab", buffering=0)
            self._errors_fh = self.errors.open("wb", buffering=0)
            self._end = os.fstat(self._partial_fh.fileno()).st_size
        except OSError as exc:
            self.close()
            raise write_failed(self.folder, exc) from None

    def append_done(self, row: InputRow, conversation: Conversation) -> None:
        """Record a finished row. Raises (nothing written) when it cannot be serialised at all, and
        :class:`JobWriteError` when the file cannot be written."""
        data = conversation.to_json_dict()
        try:
            body = _dumps(data)
        except ValueError:  # lone UTF-16 surrogates (a reply cut inside an emoji) cannot be UTF-8
            body = _dumps(scrub_surrogates(data))
        # The conversation goes last and verbatim, so assembling the output is a byte copy.
        head = _dumps({"id": row.row_id, "fp": self.fingerprint, "rq": row_digest(row)})[:-1]
        line = head + _CONV_KEY + body + b"}\n"
        self._write(self._partial_fh, self.partial, line)
        if self.done is not None:
            self.done.mark(row.index, self._end)
        self._end += len(line)

    def append_failed(self, row: InputRow, error: RowError) -> None:
        record = {"id": row.row_id, "index": row.index, "line": row.line, "fp": self.fingerprint}
        record.update(error.to_json_dict())
        self._write(self._errors_fh, self.errors, _dumps(scrub_surrogates(record)) + b"\n")

    @staticmethod
    def _write(fh: Any, path: Path, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[fh.write(view) :]
        except OSError as exc:
            raise write_failed(path, exc) from None

    def close(self) -> None:
        for fh in (self._partial_fh, self._errors_fh):
            if fh is not None:
                with contextlib.suppress(OSError):
                    fh.close()
        self._partial_fh = self._errors_fh = None

    def discard_if_unanswered(self) -> None:
        """Remove the partial and errors files when the partial file holds no row (a job that stopped
        before answering any): a rerun starts the same way without them."""
        try:
            if self.partial.stat().st_size:
                return
        except FileNotFoundError:
            pass
        for path in (self.partial, self.errors):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if self._own_folder:
            self._remove_own_folder()

    def assemble(self, ordered_ids: Sequence[str], *, complete: bool) -> int:
        """Write the finished rows in input order to the output, atomically; return how many. A complete
        job leaves its finished-job index instead of the partial and errors files."""
        try:
            return self._assemble(ordered_ids, complete=complete)
        except OSError as exc:
            raise write_failed(self.output, exc) from None

    def _assemble(self, ordered_ids: Sequence[str], *, complete: bool) -> int:
        from infermux.jobs import finished

        tmp = self.output.with_name(f".{self.output.name}.{os.getpid()}.tmp")
        # A local output keeps a finished-job index (an uploaded one relies on the answer cache).
        index = finished.IndexWriter(self) if complete and self.remote is None else None
        try:
            written = self.write_output(ordered_ids, tmp, index)
            fsync_path(tmp)  # on disk before it takes the output's place, whatever wrote it (JSONL, Parquet, folder)
            self.install_output(tmp)
        except BaseException:
            if index is not None:
                index.discard()
            raise
        finally:
            self.discard_output(tmp)
        if index is not None:
            index.finish(written)
        if self.remote is not None:
            from infermux.jobs.storage import upload

            upload(self.output, self.remote)  # raises with the partial file kept: a rerun uploads again
            self.output.unlink()
        if complete:
            for leftover in (self.partial, self.errors):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
            if self._own_folder:
                self._remove_own_folder()
        elif self.errors.exists() and self.errors.stat().st_size == 0:
            self.errors.unlink()
        return written

    def install_output(self, tmp: Path) -> None:
        """Move the assembled output ``tmp`` into place (one step: a reader sees the old or the new)."""
        os.replace(tmp, self.output)

    @staticmethod
    def discard_output(tmp: Path) -> None:
        """Remove what is left of an assembled output that was not installed."""
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()

    def positions(self, ids: Sequence[str]) -> DoneRows:
        """Where each row of ``ids`` (the input's row ids, in order) is in the partial file: what
        :meth:`load_done` and :meth:`append_done` recorded, else read from the file (first line wins)."""
        if self.done is not None and len(self.done.at) == len(ids):
            return self.done
        done = DoneRows(len(ids))
        where = RowPositions(ids)
        with self.partial.open("rb") as fh:
            pos = 0
            for raw in fh:
                record = _parse_record(raw)
                if record is not None and record.get("fp") == self.fingerprint:
                    done.mark(where.find(record["id"]), pos)
                pos += len(raw)
        return done

    def write_output(self, ordered_ids: Sequence[str], tmp: Path, index: IndexWriter | None = None) -> int:
        """Write the finished rows to ``tmp`` (JSONL; :mod:`infermux.jobs.table_out` writes Parquet), each
        added to the finished-job ``index`` when one is given."""
        done = self.positions(ordered_ids)
        written = 0
        with self.partial.open("rb") as src, tmp.open("wb") as out:
            for offset in done.at:
                if offset < 0:
                    continue
                src.seek(offset)
                line = src.readline()
                out.write(_conversation_bytes(line) + b"\n")
                if index is not None:
                    index.add(*id_and_digest(line))
                written += 1
        return written

    def _remove_own_folder(self) -> None:
        """The job folder infermux named (``infermux-jobs/NAME-HASH``) and its parent, once empty."""
        for folder in (self.folder, self.folder.parent):
            with contextlib.suppress(OSError):
                folder.rmdir()


_CONV_KEY = b',"conversation":'


def _dumps(obj: Any) -> bytes:
    return to_json(obj)


def _conversation_bytes(line: bytes) -> bytes:
    """The conversation JSON of a partial-file line (written last by ``append_done``)."""
    start = line.find(_CONV_KEY)  # ids are JSON-escaped, so the first match is the key
    return line[start + len(_CONV_KEY) : line.rstrip().rfind(b"}")]


def id_and_digest(line: bytes) -> tuple[str, str]:
    """The row id and content digest of a partial-file line (one that :func:`_parse_record` accepts)."""
    record = _parse_record(line)
    assert record is not None
    return record["id"], str(record.get("rq") or "")


def _parse_record(raw: bytes) -> dict[str, Any] | None:
    """The id and fingerprint of a partial-file line; None for a torn or foreign line."""
    if not raw.endswith(b"\n"):
        return None  # torn write
    cut = raw.find(_CONV_KEY)
    try:
        record = json.loads(raw[:cut] + b"}" if cut > 0 else raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "id" in record else None


def fsync_path(path: Path) -> None:
    """Flush ``path`` to disk: a file, or a folder's files and the folder itself (before ``os.replace``
    puts it in place, so that a crash right after leaves the whole new output or the old one)."""
    if path.is_dir():
        for child in sorted(path.rglob("*")):
            if child.is_file():
                fsync_path(child)
        flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    else:
        flags = os.O_RDONLY
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
