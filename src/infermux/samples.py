"""Several answers per prompt and token log-probabilities, written in one shape by every engine.

A row keeps one output line: the first sample is the assistant message (so the output stays valid
Oumi input); with ``generation.n > 1`` or ``generation.logprobs`` every sample is also in
``metadata["samples"]`` as :class:`~infermux.types.Sample` JSON (see docs/samples.md). Engines build
:class:`Sample` objects and call :func:`reply_with_samples`; engines without a native ``n`` send n
requests and combine the answers with :func:`merge_replies`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

from infermux.configs.generation_params import GenerationParams
from infermux.types import Conversation, Sample, TokenLogprob, ToolCall, TopLogprob, Usage

__all__ = [
    "Piece",
    "merge_replies",
    "read_samples",
    "reply_with_samples",
    "sum_usage",
    "token_logprob",
    "wants_samples",
    "warn_identical_samples",
]

logger = logging.getLogger("infermux.samples")


def wants_samples(generation: GenerationParams) -> bool:
    """Whether rows keep ``metadata["samples"]`` (several answers, or log-probabilities asked for)."""
    return generation.n > 1 or generation.logprobs


def warn_identical_samples(generation: GenerationParams, engine_name: str) -> bool:
    """Warn when ``n > 1`` answers will all be the same (greedy decoding); True when it warned."""
    if generation.n > 1 and not generation.sampling:
        logger.warning(
            "%s: generation.n=%d with temperature 0 (greedy): the %d samples of each row will be identical. "
            "Set a temperature above 0 (and a seed to make them reproducible).",
            engine_name, generation.n, generation.n,
        )  # fmt: skip
        return True
    return False


def _finite(value: float) -> float:
    # JSON has no -inf: a token the processors masked out is reported with the lowest float instead.
    return value if math.isfinite(value) else -9999.0


#: A token as an engine knows it: its text (bytes unknown), its raw bytes (the text is their lenient
#: decoding: a piece of a multi-byte character shows as U+FFFD), or both (bytes may be None).
Piece = str | bytes | tuple[str, bytes | list[int] | None]


def _piece(token: Piece) -> tuple[str, list[int] | None]:
    if isinstance(token, tuple):
        text, raw = token
        return text, list(raw) if raw is not None else None
    if isinstance(token, bytes):
        return token.decode("utf-8", errors="replace"), list(token)
    return token, None


def token_logprob(token: Piece, logprob: float, top: Iterable[tuple[Piece, float]] = ()) -> TokenLogprob:
    """A :class:`TokenLogprob` from plain values: alternatives most likely first (servers do not all
    sort them), ``-inf`` as -9999.0 (as OpenAI reports it). Each token is a :data:`Piece`: with its
    bytes where the engine knows them, so that joining an answer's bytes gives its exact UTF-8."""
    alternatives = []
    for alternative, lp in top:
        text, raw = _piece(alternative)
        alternatives.append(TopLogprob(token=text, logprob=_finite(float(lp)), bytes=raw))
    alternatives.sort(key=lambda a: -a.logprob)
    text, raw = _piece(token)
    return TokenLogprob(token=text, logprob=_finite(float(logprob)), bytes=raw, top_logprobs=alternatives)


def sum_usage(usages: Iterable[Usage | None]) -> Usage | None:
    """The field-by-field sum of the known counts (None when none is known)."""
    known = [u for u in usages if u is not None]
    if not known:
        return None
    totals: dict[str, int] = {}
    for usage in known:
        for key, value in usage.to_json_dict().items():
            totals[key] = totals.get(key, 0) + value
    summed = Usage(**totals)
    if summed.prompt_tokens is not None and summed.completion_tokens is not None:
        # recomputed: parts may have had no total of their own
        summed = summed.model_copy(update={"total_tokens": summed.prompt_tokens + summed.completion_tokens})
    return summed


def reply_with_samples(
    conversation: Conversation,
    samples: Sequence[Sample],
    metadata: dict[str, Any] | None = None,
    *,
    usage: Usage | None = None,
    generation: GenerationParams | None = None,
    tool_calls: list[ToolCall] | None = None,
    reasoning_content: str | None = None,
) -> Conversation:
    """``conversation`` answered with ``samples[0]``, all samples in ``metadata["samples"]``.

    ``usage`` is the row's usage (default: the samples' summed); the row's ``finish_reason``, and the
    assistant message's ``tool_calls`` (default: read from the sample) and ``reasoning_content``, are
    the first sample's. ``metadata["samples"]`` is written when there are several samples, when one has
    log-probabilities, or when ``generation`` asks for samples; a plain single answer is unchanged.
    """
    if not samples:
        raise ValueError("an answer needs at least one sample")
    first = samples[0]
    merged = dict(metadata or {})
    merged.pop("samples", None)
    keep = len(samples) > 1 or any(s.logprobs is not None for s in samples)
    if generation is not None and wants_samples(generation):
        keep = True
    if keep:
        merged["samples"] = [s.to_json_dict() for s in samples]
    if tool_calls is None and first.tool_calls:
        tool_calls = [ToolCall.model_validate(c) for c in first.tool_calls]
    row_usage = usage if usage is not None else sum_usage(s.usage for s in samples)
    return conversation.with_reply(first.text, merged, usage=row_usage, finish_reason=first.finish_reason,
                                   tool_calls=tool_calls, reasoning_content=reasoning_content)  # fmt: skip


def _sample_of(answer: Conversation) -> Sample:
    inner = answer.samples
    logprobs = inner[0].logprobs if inner else None
    calls = answer.last_message.tool_calls
    return Sample(
        text=answer.last_message.text,
        finish_reason=answer.finish_reason,
        usage=answer.usage,
        tool_calls=[c.to_json_dict() for c in calls] if calls else None,
        logprobs=logprobs,
    )


def merge_replies(
    conversation: Conversation, answers: Sequence[Conversation], generation: GenerationParams | None = None
) -> Conversation:
    """One row from n separately answered copies of ``conversation`` (engines without a native ``n``).

    Each answer is a sample; the row's metadata is the first answer's, its usage the sum (n requests
    are n bills).
    """
    samples = [_sample_of(a) for a in answers]
    metadata = {k: v for k, v in answers[0].metadata.items() if k not in conversation.metadata or k == "usage"}
    metadata.pop("usage", None)
    first = answers[0].last_message
    merged = reply_with_samples(conversation, samples, metadata, generation=generation, tool_calls=first.tool_calls,
                                reasoning_content=first.reasoning_content)  # fmt: skip
    if "usage" in merged.metadata and any(s.usage is None for s in samples):
        # one of the n bills has no count: the row's total is unknown, not the sum of the others
        return merged.model_copy(update={"metadata": {k: v for k, v in merged.metadata.items() if k != "usage"}})
    return merged


def read_samples(conversation: Conversation) -> list[Sample]:
    """The samples of an answered row: ``metadata["samples"]``, or its one assistant answer."""
    stored = conversation.samples
    if stored is not None:
        return list(stored)
    return [
        Sample(
            text=conversation.last_message.text,
            finish_reason=conversation.finish_reason,
            usage=conversation.usage,
            tool_calls=[c.to_json_dict() for c in conversation.last_message.tool_calls or []] or None,
        )
    ]
