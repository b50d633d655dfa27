"""The transport's trace spans and events (used only when tracing is on: :mod:`infermux.tracing`).

Each HTTP attempt is a client span named after its method, with ``http.request.method``,
``server.address``, ``server.port``, ``url.path`` (never the query string: some providers put keys
there), ``http.response.status_code``, ``http.request.resend_count`` and, when it failed,
``error.type``. Retries and waits are events on the current span (the row's).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = ["event", "status_attribute", "traced_attempt"]

T = TypeVar("T")


async def traced_attempt(tracer: Any, method: str, url: str, resent: int, attempt: Callable[[], Awaitable[T]]) -> T:
    """``attempt()`` inside a client span."""
    from opentelemetry.trace import SpanKind, Status, StatusCode

    parts = urllib.parse.urlsplit(url)
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "server.address": parts.hostname or "",
        "server.port": parts.port or (443 if parts.scheme == "https" else 80),
        "url.path": parts.path,
    }
    if resent:
        attributes["http.request.resend_count"] = resent
    with tracer.start_as_current_span(
        method, kind=SpanKind.CLIENT, attributes=attributes, record_exception=False, set_status_on_exception=False
    ) as span:
        try:
            return await attempt()
        except Exception as exc:  # a failed attempt: its kind (rate_limited, http_error, timeout, ...)
            span.set_attribute("error.type", str(getattr(exc, "kind", type(exc).__name__)))
            span.set_status(Status(StatusCode.ERROR))
            raise


def event(name: str, attributes: dict[str, Any]) -> None:
    """An event on the current span."""
    from opentelemetry import trace

    trace.get_current_span().add_event(name, attributes)


def status_attribute(status: int) -> None:
    """The reply's status on the current (attempt) span."""
    from opentelemetry import trace

    trace.get_current_span().set_attribute("http.response.status_code", status)
