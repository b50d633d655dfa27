"""OpenTelemetry traces of jobs, rows, HTTP attempts and ``serve`` requests (the ``infermux[otel]`` extra).

Tracing is off unless asked for, and then costs nothing: no OpenTelemetry module is imported, and every
call site checks one value (:func:`tracer` is None). It is on when

* the standard variables ask for an exporter: ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``; ``none``
  turns it off), or an OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT``,
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``). infermux then sets up the SDK itself: a batch span
  processor and the exporter those variables name (OTLP over HTTP/protobuf unless
  ``OTEL_EXPORTER_OTLP_PROTOCOL`` says ``grpc``), with the service name of ``OTEL_SERVICE_NAME``
  (default ``infermux``); spans still buffered are sent when the process exits;
* or the application already installed an SDK tracer provider (``trace.set_tracer_provider``), or
  handed one to :func:`set_tracer_provider`: spans go there, to its processors and exporters.
  ``OTEL_SDK_DISABLED=true`` turns tracing off in every case.

What the spans hold (names and attributes in docs/tracing.md): counts, ids, statuses, token usage,
costs and timings. Never the API key, the prompt or the answer text, and never a URL's query string.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from infermux.errors import install_hint

__all__ = ["SCOPE", "set_tracer_provider", "tracer", "tracing_wanted"]

logger = logging.getLogger("infermux.tracing")

#: The instrumentation scope of every infermux span.
SCOPE = "infermux"

_UNSET: Any = object()
_tracer: Any = _UNSET
_provider: Any = None


def tracing_wanted() -> bool:
    """Whether the ``OTEL_*`` variables ask for traces to be exported."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def set_tracer_provider(provider: Any) -> None:
    """Send infermux's spans to ``provider`` (an SDK ``TracerProvider``); None: back to the default
    (the ``OTEL_*`` variables, or the global provider)."""
    global _tracer, _provider
    _provider = provider
    _tracer = _UNSET


def tracer() -> Any:
    """infermux's ``Tracer``, or None when tracing is off (decided once per process, or provider)."""
    global _tracer
    if _tracer is _UNSET:
        _tracer = _make_tracer()
    return _tracer


def _version() -> str:
    from infermux import __version__

    return str(__version__)


def _make_tracer() -> Any:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if _provider is not None:
        return _provider.get_tracer(SCOPE, _version())
    wanted = tracing_wanted()
    if not wanted and "opentelemetry.trace" not in sys.modules:
        return None  # nobody asked, and no application set OpenTelemetry up: stay off, import nothing
    try:
        from opentelemetry import trace
    except ImportError:
        if wanted:
            logger.warning(
                "OTEL_* variables ask for traces, but OpenTelemetry is not installed: %s. Going on without traces.",
                install_hint("otel"),
            )
        return None
    current = trace.get_tracer_provider()
    if type(current).__name__ not in ("ProxyTracerProvider", "NoOpTracerProvider"):
        return current.get_tracer(SCOPE, _version())  # the application's own SDK provider
    if not wanted:
        return None
    provider = _sdk_provider()
    if provider is None:
        return None
    trace.set_tracer_provider(provider)
    return provider.get_tracer(SCOPE, _version())


def _sdk_provider() -> Any:
    """An SDK tracer provider exporting as the ``OTEL_*`` variables say (None: the SDK is missing)."""
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        logger.warning("OTEL_* variables ask for traces, but opentelemetry-sdk is missing: %s.", install_hint("otel"))
        return None
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: "infermux"}
    provider = TracerProvider(resource=Resource.create(attributes))
    names = [n.strip().lower() for n in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if n.strip()]
    for name in names:
        if name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name == "otlp":
            exporter = _otlp_exporter()
            if exporter is not None:
                provider.add_span_processor(BatchSpanProcessor(exporter))
        else:
            logger.warning("OTEL_TRACES_EXPORTER=%s is not one infermux sets up (otlp, console, none).", name)
    return provider


def _otlp_exporter() -> Any:
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    ).strip()
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:  # http/protobuf, the specification's default
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
                OTLPSpanExporter,
            )
    except ImportError:
        logger.warning("the OTLP exporter (%s) is not installed: %s.", protocol or "http", install_hint("otel"))
        return None
    return OTLPSpanExporter()  # reads its endpoint, headers and timeout from the OTEL_* variables
