"""The files of one job: ``<output>.partial.jsonl`` (every finished row, flushed per row, tagged with its
row id and the config fingerprint), ``<output>.errors.jsonl`` (failed rows) and the output itself,
assembled in input order and moved into place with ``os.replace``.

The partial and errors files sit beside the output, or in ``job_dir`` when given. An output URI
(``s3://...``, see :mod:`infermux.jobs.storage`) is assembled in that local job folder and then uploaded.

A torn last line (``kill -9`` during a write) or a line written under another fingerprint is dropped
when the job resumes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic_core import to_json

from infermux.errors import OutputError, RowError
from infermux.jobs.rows import InputRow
from infermux.text import scrub_surrogates
from infermux.types import Conversation

__all__ = ["JobFiles"]

logger = logging.getLogger("infermux.jobs")


class JobFiles:
    """The output, partial and errors files of one job, and the resume state read from them."""

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
        self.fingerprint = fingerprint
        self._partial_fh: Any = None
        self._errors_fh: Any = None

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
        if self.output.is_dir():
            raise OutputError(f"{self.output}: is a directory; --output_path must name a file.")
        if not parent.is_dir():
            raise OutputError(f"{parent}: output directory does not exist. Create it or choose another path.")
        if not os.access(parent, os.W_OK):
            raise OutputError(f"{parent}: output directory is not writable. Choose another --output_path.")

    def load_done(self, *, compact: bool = True) -> set[str]:
        """Row ids already finished under this fingerprint.

        With ``compact`` the partial file is rewritten without torn lines and repeated rows, and rows
        answered under another fingerprint (the config changed since) are moved to :attr:`stale`
        (appended), never dropped; ``stale_rows`` counts them. Without it (a dry run) nothing is written.
        """
        self.stale_rows = 0
        if not self.partial.exists():
            return set()
        done: set[str] = set()
        keep: list[bytes] = []
        stale: list[bytes] = []
        dirty = False
        with self.partial.open("rb") as fh:
            for raw in fh:
                record = _parse_record(raw)
                if record is None or record.get("id") in done:
                    dirty = True
                elif record.get("fp") != self.fingerprint:
                    dirty = True
                    stale.append(raw)
                else:
                    done.add(record["id"])
                    keep.append(raw)
        if dirty and compact:
            if stale:
                with self.stale.open("ab") as out:
                    out.writelines(stale)
                    out.flush()
                    os.fsync(out.fileno())
                self.stale_rows = len(stale)
                logger.warning(
                    "%d rows were answered under a different config (model, generation or engine settings "
                    "changed): they are not reused, and were moved to %s",
                    self.stale_rows,
                    self.stale,
                )
            tmp = self.partial.with_name(self.partial.name + ".tmp")
            with tmp.open("wb") as out:
                out.writelines(keep)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.partial)
        return done

    def open(self) -> None:
        self._partial_fh = self.partial.open("ab")
        self._errors_fh = self.errors.open("wb")

    def append_done(self, row: InputRow, conversation: Conversation) -> None:
        """Record a finished row. Raises (nothing written) when it cannot be serialised at all."""
        data = conversation.to_json_dict()
        try:
            body = _dumps(data)
        except ValueError:  # lone UTF-16 surrogates (a reply cut inside an emoji) cannot be UTF-8
            body = _dumps(scrub_surrogates(data))
        # The conversation goes last and verbatim, so assembling the output is a byte copy.
        head = _dumps({"id": row.row_id, "fp": self.fingerprint})[:-1]
        self._partial_fh.write(head + _CONV_KEY + body + b"}\n")
        self._partial_fh.flush()

    def append_failed(self, row: InputRow, error: RowError) -> None:
        record = {"id": row.row_id, "index": row.index, "line": row.line, "fp": self.fingerprint}
        record.update(error.to_json_dict())
        self._errors_fh.write(_dumps(scrub_surrogates(record)) + b"\n")
        self._errors_fh.flush()

    def close(self) -> None:
        for fh in (self._partial_fh, self._errors_fh):
            if fh is not None:
                fh.close()
        self._partial_fh = self._errors_fh = None

    def assemble(self, ordered_ids: Iterable[str], *, complete: bool) -> int:
        """Write the finished rows in input order to the output, atomically; return how many."""
        tmp = self.output.with_name(f".{self.output.name}.{os.getpid()}.tmp")
        try:
            written = self.write_output(ordered_ids, tmp)
            os.replace(tmp, self.output)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
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

    def offsets(self) -> dict[str, int]:
        """Row id → byte offset of its line in the partial file (rows of this fingerprint, first wins)."""
        offsets: dict[str, int] = {}
        with self.partial.open("rb") as fh:
            pos = 0
            for raw in fh:
                record = _parse_record(raw)
                if record is not None and record.get("fp") == self.fingerprint:
                    offsets.setdefault(record["id"], pos)
                pos += len(raw)
        return offsets

    def write_output(self, ordered_ids: Iterable[str], tmp: Path) -> int:
        """Write the finished rows to ``tmp`` (JSONL; :mod:`infermux.jobs.table_out` writes Parquet)."""
        offsets = self.offsets()
        written = 0
        with self.partial.open("rb") as src, tmp.open("wb") as out:
            for rid in ordered_ids:
                offset = offsets.get(rid)
                if offset is None:
                    continue
                src.seek(offset)
                out.write(_conversation_bytes(src.readline()) + b"\n")
                written += 1
            out.flush()
            os.fsync(out.fileno())
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
