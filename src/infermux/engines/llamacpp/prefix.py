"""Where each admitted prompt gets its KV from: the slot's own cache, a copy of another slot, or nothing.

:func:`plan_admissions` decides, for requests entering free slots together, which slot each takes and
how many leading prompt tokens it need not evaluate:

- *in place*: a free slot still holds the KV of the prompt it ran last (the previous chat turn, a row
  with the same system prompt); the common prefix is kept and only the rest is evaluated;
- *copy*: another slot (busy or just taken) holds a longer common prefix; its KV stream is copied
  (``llama_memory_seq_cp``) and trimmed;
- *follow*: another request admitted at the same time shares a prefix; it is evaluated in the first
  wave and copied into the follower's slot for the second wave.

A copy moves a whole KV stream, so it is chosen only when it saves at least ``MIN_COPY`` tokens more
than reuse in place. In place, the lowest free slot is taken unless another saves ``MIN_COPY`` tokens
more: busy slots stay together, and llama.cpp decodes a run of consecutive slots in one pass.

At least the last two prompt tokens are always evaluated: the last one's logits give the first answer token,
and llama.cpp computes a token alone in its sequence's batch (as a generation step) slightly differently
from a token among others (as a prompt), so evaluating one token alone would make the answer depend on what
the cache held. For the same reason a batch row reuses only KV computed as prompt tokens, not that of
generated tokens (each computed alone in a step), and answers exactly as it would without the cache. A
streamed chat turn (``Request.keep_answer``) also keeps its answer's KV, so the next turn evaluates only its
new message, as llama-cpp-python's own chat loop does (and answers as it does).

A prompt with images (:mod:`.media`) gives the key ranges of its image chunks: an image is evaluated whole,
so a reuse that would end inside one ends where it starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["MIN_COPY", "Admission", "Plan", "common_prefix", "plan_admissions"]

MIN_COPY = 16


@dataclass(frozen=True)
class Admission:
    index: int  # which request
    slot: int  # the slot it takes
    source: int | None  # the slot whose KV is copied into ``slot`` first (None: reuse in place)
    keep: int  # leading prompt tokens whose KV is reused


@dataclass
class Plan:
    waves: list[list[Admission]] = field(default_factory=lambda: [[], []])


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common prefix of two token lists (slice comparisons run in C)."""
    lo, hi = 0, min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    while lo < hi:  # invariant: a[:lo] == b[:lo] and a[:hi + 1] != b[:hi + 1]
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def plan_admissions(
    prompts: Sequence[Sequence[int]],
    cached: Sequence[Sequence[int]],
    free: Sequence[int],
    spans: Sequence[Sequence[tuple[int, int]]] = (),
) -> Plan:
    """Assign each prompt (``len(prompts) <= len(free)``) a slot and a KV source; see the module docs.
    ``spans[i]``: the ``[start, end)`` key ranges of prompt ``i``'s image chunks (none when left out)."""
    plan = Plan()
    available = list(free)
    taken_as_copy: set[int] = set()  # destinations: their KV is not what ``cached`` says
    leaders: list[tuple[int, int]] = []  # (prompt index, slot) of the first wave
    for i, prompt in enumerate(prompts):
        limit = max(0, len(prompt) - 2)
        cuts = spans[i] if i < len(spans) else ()
        reuse = {s: _reusable(cached[s], prompt, limit, cuts) for s in available}
        # A gap between busy slots costs a pass per decode step (see ``decode``), more than a few prompt tokens:
        # the lowest free slot that reuses nearly as much as the best one.
        best = max(reuse.values())
        slot_in = min(s for s in available if reuse[s] > best - MIN_COPY)
        # (tokens saved, preference, source slot to copy, leader slot to follow)
        options: list[tuple[int, int, int | None, int | None]] = [(reuse[slot_in], 0, None, None)]
        for s in range(len(cached)):
            if s in available or s in taken_as_copy:  # a free slot is better used in place
                continue
            keep = _reusable(cached[s], prompt, limit, cuts)
            options.append((keep - MIN_COPY, 1, s, None))
        for j, slot in leaders:
            keep = _reusable(prompts[j], prompt, limit, cuts)
            options.append((keep - MIN_COPY, 2, None, slot))
        saved, _, source, leader = max(options, key=lambda o: (o[0], -o[1]))
        if source is None and leader is None:
            available.remove(slot_in)
            plan.waves[0].append(Admission(i, slot_in, None, saved))
            leaders.append((i, slot_in))
            continue
        slot = min(available, key=lambda s: (reuse[s], len(cached[s])))
        available.remove(slot)
        taken_as_copy.add(slot)
        if source is not None:
            plan.waves[0].append(Admission(i, slot, source, saved + MIN_COPY))
            leaders.append((i, slot))
        else:
            plan.waves[1].append(Admission(i, slot, leader, saved + MIN_COPY))
    return plan


def _reusable(keys: Sequence[int], prompt: Sequence[int], limit: int, spans: Sequence[tuple[int, int]]) -> int:
    """How many leading keys of ``prompt`` the KV of ``keys`` serves: the common prefix, at most ``limit``,
    never ending inside an image span (then it ends where the image starts)."""
    keep = min(common_prefix(keys, prompt), limit)
    for start, end in spans:
        if start < keep < end:
            return start
    return keep
