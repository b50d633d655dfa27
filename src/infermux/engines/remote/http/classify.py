"""Which failed replies can never succeed, read from the providers' documented error bodies.

A status code alone misleads: OpenAI answers an exhausted quota or spend limit with ``429``, the
same status as a rate limit, yet waiting never fixes it. :func:`permanent_failure` reads the error
object (OpenAI ``{"error": {"type", "code", "message"}}``, Anthropic ``{"type": "error", "error":
{"type", "message"}}``, Google ``{"error": {"code", "status", "message", "details"}}``, possibly
wrapped in a one-element list as Vertex does) and says when a reply is a permanent failure, with
its kind and what the user can do. Waits a reply asks for (headers and body) are read in one place,
:func:`infermux.engines.remote.http.limits.retry_hint`.
"""

from __future__ import annotations

from dataclasses import dataclass

from infermux.engines.remote.http.limits import body_retry_hint, error_object

__all__ = ["Verdict", "body_retry_hint", "error_object", "permanent_failure"]

#: OpenAI error types/codes of billing, quota and spend limits (answered 429; retrying never helps).
_QUOTA_CODES = frozenset(
    {
        "insufficient_quota",
        "billing_hard_limit_reached",
        "billing_not_active",
        "credit_balance_exhausted",
        "organization_spend_limit_exceeded",
        "project_spend_limit_exceeded",
        "organization_usage_limit_exceeded",
        "access_terminated",
    }
)
#: Anthropic: ``billing_error`` (402), and 400 invalid_request_error messages of credit and spend limits;
#: Google: 400 FAILED_PRECONDITION when the project must enable billing first.
_ANTHROPIC_BILLING_TYPES = frozenset({"billing_error"})
_BILLING_PHRASES = ("credit balance is too low", "reached your specified api usage limits",
                    "reached your specified workspace api usage limits", "enable billing")  # fmt: skip
_CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
_CONTEXT_PHRASES = ("prompt is too long", "maximum context length", "context length", "input token count")

QUOTA_ADVICE = (
    "This is a billing or quota limit of the account the API key belongs to, not a rate limit: "
    "retrying will not help. Check the plan, credits and spend limits, or use another key."
)
CONTEXT_ADVICE = (
    "The conversation is longer than the model accepts: shorten it or choose a model with a longer context."
)


@dataclass(frozen=True)
class Verdict:
    """A permanent failure: its row-error kind and advice to append to the provider's message."""

    kind: str
    advice: str = ""


def permanent_failure(status: int, body: bytes) -> Verdict | None:
    """A :class:`Verdict` when the reply says retrying cannot succeed, else None (decide by status)."""
    error = error_object(body)
    codes = {str(error.get(k)) for k in ("type", "code") if isinstance(error.get(k), str)}
    message = str(error.get("message") or "").lower()
    if codes & _QUOTA_CODES or codes & _ANTHROPIC_BILLING_TYPES or status == 402:
        return Verdict("quota_exceeded", QUOTA_ADVICE)
    if status == 400 and any(p in message for p in _BILLING_PHRASES):
        return Verdict("quota_exceeded", QUOTA_ADVICE)
    if codes & _CONTEXT_CODES or (status in (400, 413) and any(p in message for p in _CONTEXT_PHRASES)):
        return Verdict("context_length_exceeded", CONTEXT_ADVICE)
    return None
