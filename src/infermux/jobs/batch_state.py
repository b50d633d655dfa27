"""The record of a provider batch job, kept beside its output as ``<output>.batch.json``.

It is what makes ``infermux batch`` safe to interrupt: every step (file uploaded, batch creation
started, batch created, status seen) is written atomically (temporary file + ``os.replace``) before
the next one starts, so a rerun picks up exactly where the last run stopped and never creates a
second batch for a shard that already has one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from infermux.errors import ConfigError

__all__ = ["TERMINAL_STATUSES", "BatchJobState", "ShardState", "state_path"]

# The final statuses of OpenAI's batches and Anthropic's ``processing_status: ended``: how records written
# before a shard kept ``ended`` tell whether it ended.
TERMINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled", "ended"})
_VERSION = 1


def state_path(output_path: str | os.PathLike[str]) -> Path:
    output = Path(output_path)
    return output.with_name(output.name + ".batch.json")


@dataclass
class ShardState:
    """One uploaded file and its batch: rows ``first_index`` .. ``last_index`` of the input."""

    index: int
    first_index: int
    last_index: int
    requests: int
    bytes: int
    input_file_id: str | None = None
    create_started: bool = False
    batch_id: str | None = None
    status: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    request_counts: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    create_started_at: str | None = None  # UTC time the creation was asked for (found again by it)
    ended: bool = False  # the batch client said no request of it will run any more

    @property
    def terminal(self) -> bool:
        return self.ended


@dataclass
class BatchJobState:
    """Everything needed to resume, poll and fetch a submitted job."""

    path: Path
    fingerprint: str
    input_path: str
    endpoint: str
    completion_window: str
    job_id: str = ""
    rows_digest: str = ""  # the input's row ids, hashed: fetch refuses a different input
    shards: list[ShardState] = field(default_factory=list)
    build_errors: dict[str, str] = field(default_factory=dict)  # row id -> why no request was built

    def __post_init__(self) -> None:
        if not self.job_id:
            seed = f"{self.fingerprint}|{Path(self.input_path).resolve()}|{self.path.resolve()}"
            self.job_id = hashlib.sha256(seed.encode()).hexdigest()[:20]

    @classmethod
    def load(cls, output_path: str | os.PathLike[str]) -> BatchJobState | None:
        path = state_path(output_path)
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            shards = [ShardState(**{"ended": s.get("status") in TERMINAL_STATUSES, **s}) for s in data.pop("shards")]
            if data.pop("version", None) != _VERSION:
                raise ValueError("unknown version")
            return cls(path=path, shards=shards, **data)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            message = f"{path}: not a readable infermux batch record ({exc}); move it away to start over."
            raise ConfigError(message) from None

    @classmethod
    def require(cls, output_path: str | os.PathLike[str]) -> BatchJobState:
        state = cls.load(output_path)
        if state is None:
            raise ConfigError(
                f"no batch job is recorded for {output_path} (expected {state_path(output_path)}); "
                "run `infermux batch submit` with the same --output_path first."
            )
        return state

    def save(self) -> None:
        data: dict[str, Any] = {"version": _VERSION, **asdict(self)}
        data.pop("path")
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    @property
    def all_terminal(self) -> bool:
        return all(s.terminal for s in self.shards)
