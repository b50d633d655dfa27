"""The spans of a job and of its rows (built only when tracing is on: see :mod:`infermux.tracing`).

``infermux.job`` spans the whole job; each row gets an ``infermux.row`` span, its child, open while the
engine answers it; when a chunk holds one row (remote engines) the row's span is the current span
while it is answered, so the transport's HTTP attempts (and their retry and wait events) are its
children. Attributes are counts, ids, statuses, usage and cost: never prompt or answer text.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from infermux.types import Conversation

if TYPE_CHECKING:
    from infermux.configs.generation_params import GenerationParams
    from infermux.engines.base import InferenceEngine
    from infermux.errors import RowError
    from infermux.jobs.loop import BatchReport
    from infermux.jobs.rows import InputRow

__all__ = ["JobSpans", "job_spans"]


def job_spans(engine: InferenceEngine, generation: GenerationParams) -> JobSpans | None:
    """The job's spans, or None when tracing is off (the only cost then: this call, once per job)."""
    from infermux.tracing import tracer

    current = tracer()
    return None if current is None else JobSpans(current, engine, generation)


class JobSpans:
    def __init__(self, tracer: Any, engine: InferenceEngine, generation: GenerationParams) -> None:
        from opentelemetry import trace

        self._trace = trace
        self._tracer = tracer
        self._rows: dict[str, Any] = {}
        self._attributes: dict[str, Any] = {
            "infermux.engine": engine.label,
            "gen_ai.request.model": engine.model_params.model_name,
            "gen_ai.request.max_tokens": generation.max_new_tokens,
        }
        if generation.service_tier is not None:
            self._attributes["infermux.service_tier"] = generation.service_tier

    @contextlib.contextmanager
    def job(self, report: BatchReport) -> Iterator[None]:
        """The job's span, current while its rows run (their tasks inherit it)."""
        attributes = {**self._attributes, "infermux.rows.total": report.total, "infermux.rows.resumed": report.resumed}
        with self._tracer.start_as_current_span("infermux.job", attributes=attributes) as span:
            try:
                yield
            finally:
                span.set_attributes(
                    {
                        "infermux.rows.done": report.done,
                        "infermux.rows.failed": report.failed,
                        "infermux.rows.cached": report.cached,
                        "gen_ai.usage.input_tokens": report.prompt_tokens,
                        "gen_ai.usage.output_tokens": report.completion_tokens,
                    }
                )
                if report.cost.priced:
                    span.set_attribute("infermux.cost_usd", round(report.cost.dollars, 10))
                if report.budget_stopped:
                    span.set_attribute("infermux.budget_stopped", True)

    def _start(self, row: InputRow) -> Any:
        span = self._tracer.start_span("infermux.row", attributes={"infermux.row.id": row.row_id})
        self._rows[row.row_id] = span
        return span

    @contextlib.contextmanager
    def chunk(self, rows: list[InputRow]) -> Iterator[None]:
        """Row spans for ``rows`` while the engine answers them (ended when each row is recorded)."""
        spans = [self._start(row) for row in rows]
        if len(spans) != 1:
            yield
            return
        with self._trace.use_span(spans[0], end_on_exit=False):
            yield

    def recorder(
        self, on_result: Callable[[InputRow, Conversation | RowError], None]
    ) -> Callable[[InputRow, Conversation | RowError], None]:
        """``on_result`` that also ends the row's span with what became of the row."""

        def traced(row: InputRow, result: Conversation | RowError) -> None:
            on_result(row, result)  # first: pricing writes the row's cost into its metadata
            span = self._rows.pop(row.row_id, None) or self._start(row)
            self._rows.pop(row.row_id, None)
            if isinstance(result, Conversation):
                _answered(span, result)
            else:
                span.set_attributes({"infermux.row.status": "failed", "error.type": str(result.kind)})
                if result.status is not None:
                    span.set_attribute("http.response.status_code", result.status)
                span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
            span.end()

        return traced


def _answered(span: Any, result: Conversation) -> None:
    attributes: dict[str, Any] = {"infermux.row.status": "cached" if result.cached else "done"}
    usage = result.usage
    if usage is not None:
        if usage.prompt_tokens is not None:
            attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
        if usage.completion_tokens is not None:
            attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
    reason = result.finish_reason
    if reason is not None:
        attributes["gen_ai.response.finish_reasons"] = [str(reason.value if hasattr(reason, "value") else reason)]
    for key, name in (("cost_usd", "infermux.cost_usd"), ("service_tier", "infermux.service_tier")):
        value = result.metadata.get(key)
        if isinstance(value, int | float | str):
            attributes[name] = value
    span.set_attributes(attributes)
