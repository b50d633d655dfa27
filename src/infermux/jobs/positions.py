"""A job's per-row state, by input position (:mod:`infermux.jobs.files` keeps it): where each finished row's
answer is in the partial file (:class:`DoneRows`, 8 bytes a row), the lookup of a row id's position
(:class:`RowPositions`, 16 bytes a row, only while a partial file is read back) and the recorded content
digests (:class:`Digests`, 8 bytes a row, the same while). Nothing here holds a dict or set of row ids.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Any

__all__ = ["Digests", "DoneRows", "RowPositions"]


class RowPositions:
    """Row id -> its first position in ``ids`` (the input's row ids, in order): an open-addressing table of
    positions (16 bytes per row) that compares against ``ids`` itself, instead of a dict of the ids."""

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = ids
        size = 1 << max(3, (2 * len(ids)).bit_length())
        self.mask = mask = size - 1
        self.slots = slots = array("q", [-1]) * size
        for position, rid in enumerate(ids):
            slot = hash(rid) & mask
            while slots[slot] != -1:
                slot = (slot + 1) & mask
            slots[slot] = position

    def find(self, rid: Any) -> int:
        """The first position of ``rid``, or -1 when the input has no such row."""
        slots, ids, mask = self.slots, self.ids, self.mask
        slot = hash(rid) & mask
        while (position := slots[slot]) != -1:
            if ids[position] == rid:
                return position
            slot = (slot + 1) & mask
        return -1


class DoneRows:
    """The finished rows of a job, by input position: the byte offset of each row's line in the partial
    file, -1 for a row not finished. ``position in done`` says whether that row is finished."""

    def __init__(self, total: int) -> None:
        self.at = array("q", [-1]) * total

    def __contains__(self, position: object) -> bool:
        return isinstance(position, int) and 0 <= position < len(self.at) and self.at[position] >= 0

    def __len__(self) -> int:
        return len(self.at) - self.at.count(-1)

    def mark(self, position: int, offset: int = 0) -> None:
        """Record ``position`` as finished at ``offset`` (the first line of a row wins); a negative position
        (an id the input does not have) is ignored. A position past the job's rows is a caller's bug
        (an :class:`~infermux.jobs.rows.InputRow` whose ``index`` is not its place in the job): IndexError."""
        if position < 0:
            return
        if position >= len(self.at):
            raise IndexError(f"row position {position} is outside this job's {len(self.at)} rows")
        if self.at[position] < 0:
            self.at[position] = offset


class Digests:
    """The recorded content digest of each row, by position: 8 bytes each (a 16-hex-digit digest, as
    :func:`~infermux.jobs.options.request_digest` makes), any other text kept aside."""

    def __init__(self, total: int) -> None:
        self.values = array("Q", bytes(8 * total))
        self.other: dict[int, str] = {}
        self.any = False

    def put(self, position: int, digest: str) -> None:
        self.any = self.any or bool(digest)
        if len(digest) == 16:
            try:
                value = int(digest, 16)
            except ValueError:
                value = -1
            if value >= 0 and f"{value:016x}" == digest:
                self.values[position] = value
                return
        self.other[position] = digest

    def get(self, position: int) -> str:
        found = self.other.get(position)
        return found if found is not None else f"{self.values[position]:016x}"
