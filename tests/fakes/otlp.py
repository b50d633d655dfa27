"""An OTLP/HTTP trace receiver on 127.0.0.1: what a collector does with ``POST /v1/traces``.

It decodes each export request (``ExportTraceServiceRequest``, binary protobuf, gzip or not, as the
OTLP specification allows) with the ``opentelemetry-proto`` classes and keeps every span as a
:class:`ReceivedSpan`; it answers an ``ExportTraceServiceResponse``, as a collector does.
"""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.fakes._server import FakeServer, Handler


@dataclass
class ReceivedSpan:
    name: str
    span_id: bytes
    parent_span_id: bytes
    trace_id: bytes
    kind: int
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    resource: dict[str, Any] = field(default_factory=dict)
    scope: str = ""


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


class OtlpReceiver(FakeServer):
    def __init__(self) -> None:
        super().__init__()
        self.spans: list[ReceivedSpan] = []
        self.exports = 0
        self._spans_lock = threading.Lock()

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [("POST", "/v1/traces", self._traces)]

    async def _traces(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415, text=f"unsupported content type {request.content_type}")
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        received = []
        for resource_spans in export.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            span.name,
                            span.span_id,
                            span.parent_span_id,
                            span.trace_id,
                            span.kind,
                            _attributes(span.attributes),
                            [(event.name, _attributes(event.attributes)) for event in span.events],
                            resource,
                            scope_spans.scope.name,
                        )
                    )
        with self._spans_lock:
            self.spans.extend(received)
            self.exports += 1
        reply = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=reply, content_type="application/x-protobuf")

    def named(self, name: str) -> list[ReceivedSpan]:
        with self._spans_lock:
            return [s for s in self.spans if s.name == name]
