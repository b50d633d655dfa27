"""A per-row answer cache: a content-addressed store of answers, shared by every job on the machine.

The key of a row is a SHA-256 over what decides its answer: the engine, the model settings and the
generation parameters that count for resume (the config fingerprint), and the row's messages and tools.
Row ids, ``conversation_id`` and metadata do not count, so an edited dataset reruns only the rows whose
content changed, and the same request in two jobs is answered once.

Caching is on by default only where an answer is reproducible: greedy decoding (``temperature: 0``) or a
fixed ``seed``. Sampling without a seed is never cached (the user asked for a fresh draw).

The store is one SQLite file (standard library) in write-ahead-log mode with a busy timeout, so several
jobs can read and write it at once. Its size is capped: past ``max_bytes`` the least recently used
answers are dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_MAX_BYTES", "AnswerCache", "cache_key", "default_cache_path"]

DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB
_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    size INTEGER NOT NULL,
    used REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS answers_used ON answers(used);
"""


def default_cache_path() -> Path:
    """``$INFERMUX_CACHE_DIR/answers.sqlite``, else ``$XDG_CACHE_HOME/infermux/...``, else ``~/.cache/...``."""
    base = os.environ.get("INFERMUX_CACHE_DIR")
    if base:
        return Path(base) / "answers.sqlite"
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg) if xdg else Path.home() / ".cache"
    return root / "infermux" / "answers.sqlite"


def cache_key(fingerprint: str, request: dict[str, Any]) -> str:
    """The key of one row: the config ``fingerprint`` and the row's ``request`` (messages and tools)."""
    blob = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{fingerprint}\n{blob}".encode("utf-8", "surrogatepass")).hexdigest()


class AnswerCache:
    """Answers by key, in one SQLite file; safe to share between threads and processes.

    Writes are grouped: new answers and "recently used" marks are kept in memory and written in one
    transaction every ``FLUSH_ROWS`` answers or ``FLUSH_S`` seconds (and on :meth:`close`), so a row costs
    a dictionary insert, not a database commit. Answers not yet written are still found by :meth:`get`
    in this process; another process sees them after the next flush. (The job's partial file, not the
    cache, is what makes a job durable.)
    """

    FLUSH_ROWS = 256
    FLUSH_S = 1.0

    def __init__(self, path: str | os.PathLike[str] | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._written = 0
        self._pending: dict[str, tuple[bytes, float]] = {}
        self._touched: dict[str, float] = {}
        self._flushed = time.monotonic()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored answer for ``key``, or None."""
        with self._lock:
            pending = self._pending.get(key)
            if pending is not None:
                blob: bytes = pending[0]
            else:
                row = self._db.execute("SELECT value FROM answers WHERE key = ?", (key,)).fetchone()
                if row is None:
                    self.misses += 1
                    return None
                blob = row[0]
                self._touched[key] = time.time()
                self._maybe_flush()
            self.hits += 1
        value: dict[str, Any] = json.loads(blob)
        return value

    def contains(self, key: str) -> bool:
        """Whether an answer is stored under ``key`` (not counted as a hit or a miss)."""
        with self._lock:
            if key in self._pending:
                return True
            return self._db.execute("SELECT 1 FROM answers WHERE key = ?", (key,)).fetchone() is not None

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Store ``value`` (a JSON object) under ``key``; drop the oldest answers past the size cap."""
        blob = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")
        with self._lock:
            self._pending[key] = (blob, time.time())
            self._maybe_flush()

    def flush(self) -> None:
        """Write what is kept in memory now."""
        with self._lock:
            self._flush()

    def _maybe_flush(self) -> None:
        if len(self._pending) + len(self._touched) >= self.FLUSH_ROWS or (
            time.monotonic() - self._flushed >= self.FLUSH_S
        ):
            self._flush()

    def _flush(self) -> None:
        self._flushed = time.monotonic()
        if not self._pending and not self._touched:
            return
        pending, self._pending = self._pending, {}
        touched, self._touched = self._touched, {}
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "INSERT OR REPLACE INTO answers(key, value, size, used) VALUES (?, ?, ?, ?)",
                [(key, blob, len(blob), used) for key, (blob, used) in pending.items()],
            )
            self._db.executemany("UPDATE answers SET used = ? WHERE key = ?", [(t, k) for k, t in touched.items()])
            self._written += sum(len(blob) for blob, _ in pending.values())
            if self._written > self.max_bytes // 64:  # check the cap now and then, not on every flush
                self._written = 0
                self._evict()
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _evict(self) -> None:
        (total,) = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM answers").fetchone()
        if total <= self.max_bytes:
            return
        excess = total - int(self.max_bytes * 0.9)
        self._db.execute(
            "DELETE FROM answers WHERE key IN (SELECT key FROM ("
            " SELECT key, size, SUM(size) OVER (ORDER BY used, key) AS running FROM answers"
            ") WHERE running - size < ?)",
            (excess,),
        )

    def close(self) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._flush()
            self._evict()
            self._db.close()

    def __enter__(self) -> AnswerCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
