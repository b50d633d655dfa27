"""Server metrics in the Prometheus text exposition format (version 0.0.4), written by hand.

Counters, gauges and cumulative histograms for what an operator watches: requests and errors, prompt
and completion tokens, time to first token and request latency, requests waiting for their first token
(queue depth), requests generating (in-flight rows) and the Batch API's finished rows (their tokens count
in the token totals).
"""

from __future__ import annotations

import bisect
from collections import defaultdict

__all__ = ["Histogram", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = _BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f'{name}_bucket{{le="{le}"}} {running}')
        out += [f"{name}_sum {self.total:.6f}", f"{name}_count {self.n}"]
        return out


class Metrics:
    """What ``GET /metrics`` shows. Methods are called from the event loop only."""

    def __init__(self, model: str, engine: str) -> None:
        self.model = model
        self.engine = engine
        self.requests: dict[str, int] = defaultdict(int)  # by mode: stream / non_stream
        self.errors: dict[str, int] = defaultdict(int)  # by HTTP status
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.ttft = Histogram()
        self.latency = Histogram()
        self.queued = 0
        self.in_flight = 0
        self.batch_rows: dict[str, int] = defaultdict(int)  # Batch API rows, by result: completed / failed

    def render(self) -> str:
        lines: list[str] = []

        def family(name: str, kind: str, help: str, samples: list[str]) -> None:
            lines.extend([f"# HELP {name} {help}", f"# TYPE {name} {kind}", *samples])

        family(
            "infermux_info",
            "gauge",
            "The served model and engine.",
            [f'infermux_info{{model="{_esc(self.model)}",engine="{_esc(self.engine)}"}} 1'],
        )
        family(
            "infermux_requests_total",
            "counter",
            "Chat completion requests received, by mode.",
            [f'infermux_requests_total{{mode="{m}"}} {self.requests[m]}' for m in ("stream", "non_stream")],
        )
        family(
            "infermux_errors_total",
            "counter",
            "Requests answered with an error, by HTTP status.",
            [f'infermux_errors_total{{status="{s}"}} {n}' for s, n in sorted(self.errors.items())]
            or ['infermux_errors_total{status="none"} 0'],
        )
        family("infermux_prompt_tokens_total", "counter", "Prompt tokens processed.",
               [f"infermux_prompt_tokens_total {self.prompt_tokens}"])  # fmt: skip
        family("infermux_completion_tokens_total", "counter", "Completion tokens generated.",
               [f"infermux_completion_tokens_total {self.completion_tokens}"])  # fmt: skip
        family("infermux_time_to_first_token_seconds", "histogram", "Seconds from request to first token.",
               self.ttft.lines("infermux_time_to_first_token_seconds"))  # fmt: skip
        family("infermux_request_latency_seconds", "histogram", "Seconds from request to last token.",
               self.latency.lines("infermux_request_latency_seconds"))  # fmt: skip
        family("infermux_queue_depth", "gauge", "Requests accepted and waiting for their first token.",
               [f"infermux_queue_depth {self.queued}"])  # fmt: skip
        family("infermux_in_flight_rows", "gauge", "Requests generating tokens.",
               [f"infermux_in_flight_rows {self.in_flight}"])  # fmt: skip
        batch = [f'infermux_batch_rows_total{{result="{r}"}} {self.batch_rows[r]}' for r in ("completed", "failed")]
        family("infermux_batch_rows_total", "counter", "Batch API requests finished, by result.", batch)
        return "\n".join(lines) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
