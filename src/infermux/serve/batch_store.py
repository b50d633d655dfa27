"""The files and batches of ``serve``'s Batch API, kept under ``--batch-dir`` so they outlive the server.

Layout (every JSON document is written to a temporary file and moved into place, so a ``kill -9`` never
leaves half of one)::

    <batch-dir>/files/<file id>.json       the File object
    <batch-dir>/files/<file id>.data       its bytes
    <batch-dir>/batches/<batch id>.json    the Batch object (status, counts, timestamps)
    <batch-dir>/batches/<batch id>/        the batch's job: its input, the job layer's partial files

Ids sort in creation order (a time stamp, then random hex), so listing and paging need no index. An id
from a request is used in a path only after it matched its exact shape.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

from infermux.jobs.files import fsync_path

__all__ = ["MAX_FILE_BYTES", "MAX_REQUESTS", "Store", "default_batch_dir", "page"]

#: OpenAI's limits for a batch input file.
MAX_FILE_BYTES = 200 * 2**20
MAX_REQUESTS = 50_000
_ID = re.compile(r"^(file-|batch_)[0-9a-f]{24}$")
_last_stamp = 0


def default_batch_dir() -> Path:
    """``$XDG_STATE_HOME/infermux/batches``, else ``~/.local/state/infermux/batches`` (state, not cache:
    deleting it loses the batches' files and results)."""
    xdg = os.environ.get("XDG_STATE_HOME")
    root = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return root / "infermux" / "batches"


def new_id(prefix: str) -> str:
    """``prefix`` + 14 hex digits of time (microseconds, increasing in this process) + 10 random ones."""
    global _last_stamp
    stamp = max(time.time_ns() // 1000, _last_stamp + 1)
    _last_stamp = stamp
    return f"{prefix}{stamp:014x}{secrets.token_hex(5)}"


def valid_id(value: str, prefix: str) -> bool:
    return value.startswith(prefix) and bool(_ID.match(value))


def write_json(path: Path, obj: Any, *, sync: bool = True) -> None:
    """Write ``obj`` to ``path`` atomically (``sync``: on disk before it replaces the old one)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as out:
        out.write(json.dumps(obj, ensure_ascii=False).encode())
        if sync:
            out.flush()
            os.fsync(out.fileno())
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def page(items: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    """OpenAI's cursor page: the ``limit`` items following ``after`` (an id in ``items``)."""
    if after:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    data = items[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(items) > limit,
    }


class Store:
    """Files and Batch objects under ``root`` (created when missing)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.files_dir = self.root / "files"
        self.batches_dir = self.root / "batches"
        for folder in (self.files_dir, self.batches_dir):
            folder.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ files
    def data_path(self, file_id: str) -> Path:
        return self.files_dir / f"{file_id}.data"

    def add_file(self, tmp: Path, filename: str, purpose: str, file_id: str | None = None) -> dict[str, Any]:
        """Move ``tmp`` (written in :attr:`files_dir`) into the store as a new file and return its object."""
        file_id = file_id or new_id("file-")
        obj = {
            "id": file_id,
            "object": "file",
            "bytes": tmp.stat().st_size,
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }
        fsync_path(tmp)  # the file's bytes on disk before its name and object say it exists
        os.replace(tmp, self.data_path(file_id))
        write_json(self.files_dir / f"{file_id}.json", obj)
        return obj

    def file(self, file_id: str) -> dict[str, Any] | None:
        if not valid_id(file_id, "file-"):
            return None
        obj = _read_json(self.files_dir / f"{file_id}.json")
        return obj if obj is not None and self.data_path(file_id).exists() else None

    def files(self) -> list[dict[str, Any]]:
        """Every file, oldest first."""
        found = (_read_json(p) for p in sorted(self.files_dir.glob("file-*.json")))
        return [obj for obj in found if obj is not None]

    def delete_file(self, file_id: str) -> bool:
        if self.file(file_id) is None:
            return False
        (self.files_dir / f"{file_id}.json").unlink()
        with contextlib.suppress(FileNotFoundError):
            self.data_path(file_id).unlink()
        return True

    # ---------------------------------------------------------------- batches
    def save_batch(self, obj: dict[str, Any], *, sync: bool = True) -> None:
        write_json(self.batches_dir / f"{obj['id']}.json", obj, sync=sync)

    def batch(self, batch_id: str) -> dict[str, Any] | None:
        if not valid_id(batch_id, "batch_"):
            return None
        return _read_json(self.batches_dir / f"{batch_id}.json")

    def batches(self) -> list[dict[str, Any]]:
        """Every batch, oldest first."""
        found = (_read_json(p) for p in sorted(self.batches_dir.glob("batch_*.json")))
        return [obj for obj in found if obj is not None]

    def work_dir(self, batch_id: str) -> Path:
        """The batch's own folder: its input and its job files."""
        folder = self.batches_dir / batch_id
        folder.mkdir(exist_ok=True)
        return folder
