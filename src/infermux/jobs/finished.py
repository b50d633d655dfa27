"""The finished-job index, ``<output>.done``: what makes a finished job "done".

When every row of a job is answered, the partial and errors files go and this small file stays beside the
output (in the job folder): the config fingerprint, the output's size and modification time, and per row
(in output order) its id and the digest of what decides its answer
(:func:`~infermux.jobs.options.request_digest`). A rerun of the job then:

* sends nothing and says so, when the input's rows (ids and contents), the config and the output are all
  as they were (:func:`finished_rows`), with or without the answer cache;
* when rows were edited, added or removed since, turns the output back into the partial file
  (:func:`reopen`), so that only those rows are answered;
* when the config changed, or the output was changed or removed, runs the whole job again.

An output uploaded to a URI keeps no index (its rerun is answered by the answer cache).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from typing import TYPE_CHECKING, Any

from infermux.jobs.options import row_digest

if TYPE_CHECKING:
    from infermux.jobs.files import JobFiles, Rows

__all__ = ["IndexWriter", "drop_leftovers", "finished_rows", "index_entries", "reopen"]

logger = logging.getLogger("infermux.jobs")
_VERSION = 1


def _entry(row_id: str, digest: str) -> bytes:
    return f"{row_id}\t{digest}\n".encode("utf-8", "surrogatepass")


class IndexWriter:
    """Collects the rows of a complete job as its output is assembled, then writes the index. The rows go
    to a scratch file as they come (memory stays flat in the job's number of rows); :meth:`finish` puts the
    header (counts and digest, known only at the end) in front of them."""

    def __init__(self, files: JobFiles) -> None:
        self.files = files
        self.hash = hashlib.sha256()
        self._scratch = files.index.with_name(f".{files.index.name}.{os.getpid()}.rows")
        self._rows = self._scratch.open("wb")

    def add(self, row_id: str, digest: str) -> None:
        self._rows.write(json.dumps([row_id, digest]).encode() + b"\n")
        self.hash.update(_entry(row_id, digest))

    def finish(self, written: int) -> None:
        """Write the index (atomically), once the output is in place."""
        self._rows.close()
        stat = self.files.output.stat()
        header = {"finished": _VERSION, "fp": self.files.fingerprint, "rows": written, "size": stat.st_size,
                  "mtime_ns": stat.st_mtime_ns, "digest": self.hash.hexdigest()}  # fmt: skip
        tmp = self.files.index.with_name(self.files.index.name + ".tmp")
        try:
            with tmp.open("wb") as out, self._scratch.open("rb") as rows:
                out.write(json.dumps(header).encode() + b"\n")
                shutil.copyfileobj(rows, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.files.index)
        finally:
            self.discard()

    def discard(self) -> None:
        """Remove the scratch file (the output was not installed, or the index is written)."""
        self._rows.close()
        with contextlib.suppress(FileNotFoundError):
            self._scratch.unlink()


def _header(files: JobFiles) -> dict[str, Any] | None:
    try:
        with files.index.open("rb") as fh:
            header = json.loads(fh.readline())
    except (OSError, ValueError):
        return None
    return header if isinstance(header, dict) and header.get("finished") == _VERSION else None


def _output_intact(files: JobFiles, header: dict[str, Any]) -> bool:
    try:
        stat = files.output.stat()
    except OSError:
        return False
    return bool(stat.st_size == header.get("size") and stat.st_mtime_ns == header.get("mtime_ns"))


def finished_rows(files: JobFiles, rows: Rows) -> int | None:
    """The number of rows when the job is finished exactly as it would run now (same config, same rows,
    output untouched), else None. Reads the input once, only when an index is there."""
    header = _header(files)
    if header is None or header.get("fp") != files.fingerprint or not _output_intact(files, header):
        return None
    digest, count = hashlib.sha256(), 0
    for row in rows():
        digest.update(_entry(row.row_id, row_digest(row)))
        count += 1
    return count if count == header.get("rows") and digest.hexdigest() == header.get("digest") else None


def drop_leftovers(files: JobFiles) -> None:
    """Remove a partial or errors file left beside a finished job's index (a run killed between writing
    the index and removing them): the index and the output say everything they did."""
    for leftover in (files.partial, files.errors):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()


def index_entries(files: JobFiles) -> dict[str, str] | None:
    """Row id -> digest of a finished job's rows, when its config and output are as now (for a dry run)."""
    header = _header(files)
    if header is None or header.get("fp") != files.fingerprint or not _output_intact(files, header):
        return None
    with files.index.open("rb") as fh:
        fh.readline()
        return {row_id: digest for row_id, digest in (json.loads(line) for line in fh)}


def reopen(files: JobFiles) -> None:
    """Before a job runs on an output it once finished (and :func:`finished_rows` said it is not finished
    as it would run now): the output's rows become the partial file again when the config is the same
    (only edited, added or missing rows are then answered); the index goes in every case."""
    if not files.index.exists():
        return
    header = _header(files)
    try:
        if files.partial.exists() or header is None or header.get("fp") != files.fingerprint:
            return  # an interrupted run's partial file is the state; another config answers every row again
        if not _output_intact(files, header):
            if files.output.exists():
                logger.warning("%s changed since its job finished: every row is answered again", files.output)
            return
        if not files.output_holds_records:  # a table output keeps answers, not whole records
            logger.warning(
                "%s: rows changed since the job finished; every row is answered again (from the answer cache "
                "where it has them)", files.destination,
            )  # fmt: skip
            return
        _seed_partial(files)
    finally:
        with contextlib.suppress(FileNotFoundError):
            files.index.unlink()


def _seed_partial(files: JobFiles) -> None:
    from infermux.jobs.files import _CONV_KEY

    tmp = files.partial.with_name(files.partial.name + ".tmp")
    with files.index.open("rb") as index, files.output.open("rb") as output, tmp.open("wb") as out:
        index.readline()  # the header
        for entry, line in zip(index, output, strict=False):
            row_id, digest = json.loads(entry)
            head = json.dumps({"id": row_id, "fp": files.fingerprint, "rq": digest}, ensure_ascii=False)[:-1]
            out.write(head.encode("utf-8", "surrogatepass") + _CONV_KEY + line.rstrip(b"\r\n") + b"}\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, files.partial)
