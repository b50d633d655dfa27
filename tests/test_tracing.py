"""Traces: the SDK's own in-memory exporter sees the spans of a job, its rows, each HTTP attempt (retries
and waits as events) and each ``serve`` request; nothing secret or private is in them; off, nothing is
imported. The OTLP export over HTTP is checked against a real receiver in ``tests/test_tracing_otlp.py``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from infermux import tracing
from infermux.configs import GenerationParams, InferenceConfig, ModelParams, RemoteParams
from infermux.engines.registry import build_engine, engine_class
from infermux.serve.app import create_app
from infermux.types import Conversation
from tests.fakes import FakeOpenAIChat

KEY = "sk-trace-secret-key-123456"
SECRET_TEXT = "my private prompt"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        tracing.set_tracer_provider(None)
        provider.shutdown()


def _rows(n: int) -> list[Conversation]:
    return [
        Conversation.model_validate({"messages": [{"role": "user", "content": f"{SECRET_TEXT} {i}"}]}) for i in range(n)
    ]


def _by_name(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in finished if s.name == name]


def _everything(span: ReadableSpan) -> str:
    events = [(e.name, dict(e.attributes or {})) for e in span.events]
    return json.dumps([span.name, dict(span.attributes or {}), events], default=str)


def test_a_job_its_rows_and_each_attempt_are_spans(spans: InMemorySpanExporter) -> None:
    with FakeOpenAIChat(api_key=KEY) as server:
        assert isinstance(server, FakeOpenAIChat)
        server.fail_next(500, "try again")  # the first request fails once and is retried
        config = InferenceConfig(
            model=ModelParams(model_name="gpt-fake"),
            engine="REMOTE",
            generation=GenerationParams(max_new_tokens=8),
            remote_params=RemoteParams(api_url=server.url + "/v1", api_key=KEY, num_workers=1, retry_backoff_base=0.05),
        )
        answered = build_engine(config).infer(_rows(3))
    assert all("error" not in a.metadata for a in answered)
    finished = spans.get_finished_spans()
    (job,) = _by_name(finished, "infermux.job")
    rows = _by_name(finished, "infermux.row")
    attempts = _by_name(finished, "POST")
    assert len(rows) == 3 and len(attempts) == 4
    assert job.attributes is not None and job.attributes["infermux.rows.done"] == 3
    assert job.attributes["infermux.engine"] == "REMOTE" and job.attributes["gen_ai.request.model"] == "gpt-fake"
    assert job.context is not None
    assert {r.parent.span_id for r in rows if r.parent} == {job.context.span_id}
    row_ids = {r.context.span_id for r in rows if r.context}
    assert all(a.parent is not None and a.parent.span_id in row_ids for a in attempts)
    failed = [a for a in attempts if (a.attributes or {}).get("http.response.status_code") == 500]
    assert len(failed) == 1 and (failed[0].attributes or {})["error.type"] == "http_error"
    resent = [a for a in attempts if (a.attributes or {}).get("http.request.resend_count") == 1]
    assert len(resent) == 1 and resent[0].parent == failed[0].parent  # the retry belongs to the same row
    retried = [r for r in rows if any(e.name == "infermux.retry" for e in r.events)]
    assert len(retried) == 1 and retried[0].context is not None
    assert failed[0].parent is not None and retried[0].context.span_id == failed[0].parent.span_id
    for row in rows:
        attributes = row.attributes or {}
        assert attributes["infermux.row.status"] == "done"
        assert attributes["gen_ai.usage.output_tokens"] > 0
    assert attempts[0].attributes is not None and attempts[0].attributes["url.path"] == "/v1/chat/completions"
    for span in finished:
        text = _everything(span)
        assert KEY not in text and SECRET_TEXT not in text and "Bearer" not in text


def test_a_failed_row_is_an_error_span(spans: InMemorySpanExporter) -> None:
    with FakeOpenAIChat(api_key=KEY) as server:
        assert isinstance(server, FakeOpenAIChat)
        server.fail_next(400, "bad request")
        config = InferenceConfig(
            model=ModelParams(model_name="gpt-fake"),
            engine="REMOTE",
            remote_params=RemoteParams(api_url=server.url + "/v1", api_key=KEY, num_workers=1),
        )
        answered = build_engine(config).infer(_rows(2))
    assert "error" in answered[0].metadata
    rows = _by_name(spans.get_finished_spans(), "infermux.row")
    statuses = sorted((r.attributes or {})["infermux.row.status"] for r in rows)
    assert statuses == ["done", "failed"]
    (bad,) = [r for r in rows if (r.attributes or {})["infermux.row.status"] == "failed"]
    assert (bad.attributes or {})["error.type"] == "invalid_request" and not bad.status.is_ok


def test_each_serve_request_is_a_server_span(spans: InMemorySpanExporter) -> None:
    engine = engine_class("ECHO")(ModelParams(model_name="echo-model"), generation_params=GenerationParams())

    async def main() -> None:
        app = create_app(engine, served_model="echo-model", api_key=KEY)
        async with TestClient(TestServer(app)) as client:
            headers = {"Authorization": f"Bearer {KEY}"}
            body: dict[str, Any] = {"model": "echo-model", "messages": [{"role": "user", "content": SECRET_TEXT}]}
            assert (await client.post("/v1/chat/completions", json=body, headers=headers)).status == 200
            assert (await client.post("/v1/chat/completions", json=body)).status == 401

    asyncio.run(main())
    served = _by_name(spans.get_finished_spans(), "POST /v1/chat/completions")
    assert sorted((s.attributes or {})["http.response.status_code"] for s in served) == [200, 401]
    assert all((s.attributes or {})["http.route"] == "/v1/chat/completions" for s in served)
    for span in spans.get_finished_spans():
        assert KEY not in _everything(span) and SECRET_TEXT not in _everything(span)


def test_off_by_default_and_nothing_is_imported() -> None:
    code = (
        "import sys, infermux\n"
        "from infermux import tracing\n"
        "from infermux.engines.remote.http import transport\n"
        "assert tracing.tracer() is None\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "[]"


def test_the_variables_turn_it_on_and_off(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    assert not tracing.tracing_wanted()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert tracing.tracing_wanted()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert not tracing.tracing_wanted()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not tracing.tracing_wanted()


def test_waits_for_the_providers_limits_are_events_on_the_row(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fakes.rate_limited import RateLimitedChat

    monkeypatch.setenv("INFERMUX_RATE_WINDOW_S", "1")
    # 20 per window, 15 of them used by another client: the job waits for the reset, before any 429
    with RateLimitedChat(limit=20, window=1.0, others=15) as server:
        assert isinstance(server, RateLimitedChat)
        config = InferenceConfig(
            model=ModelParams(model_name="gpt-fake"),
            engine="REMOTE",
            remote_params=RemoteParams(api_url=server.url + "/v1", num_workers=2),
        )
        build_engine(config).infer(_rows(10))
        assert server.rejected == 0
    rows = _by_name(spans.get_finished_spans(), "infermux.row")
    waits = [e for r in rows for e in r.events if e.name == "infermux.wait"]
    assert waits and {(e.attributes or {})["infermux.wait.reason"] for e in waits} == {"provider_limits"}
    assert max((e.attributes or {})["infermux.wait.s"] for e in waits) > 0.3
