"""A server span per ``infermux serve`` request (added only when tracing is on: :mod:`infermux.tracing`).

The span is named after the route (``POST /v1/chat/completions``) and holds the method, route, path,
status and, for chat completions, the model asked for; never the body, a header or the key. The
engine's own spans (rows answered in the request, a remote engine's HTTP attempts) are its children.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

__all__ = ["traced_requests"]


def traced_requests(tracer: Any) -> Any:
    """An aiohttp middleware that wraps each request in a server span."""
    from opentelemetry.trace import SpanKind, Status, StatusCode

    @web.middleware
    async def traced(request: web.Request, handler: Any) -> web.StreamResponse:
        info = request.match_info.route.resource
        route = info.canonical if info is not None else request.path
        attributes = {"http.request.method": request.method, "http.route": route, "url.path": request.path}
        with tracer.start_as_current_span(
            f"{request.method} {route}", kind=SpanKind.SERVER, attributes=attributes, record_exception=False,
            set_status_on_exception=False,
        ) as span:  # fmt: skip
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                span.set_attribute("http.response.status_code", exc.status)
                raise
            except BaseException as exc:
                span.set_attributes({"error.type": type(exc).__name__})
                span.set_status(Status(StatusCode.ERROR))
                raise
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            return response

    return traced
