"""``infermux infer`` with the standard ``OTEL_*`` variables exports its spans over OTLP/HTTP to a real
receiver on 127.0.0.1 (:class:`~tests.fakes.otlp.OtlpReceiver`, which decodes the protobuf requests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.fakes import FakeOpenAIChat
from tests.fakes.otlp import OtlpReceiver

KEY = "sk-otlp-secret-key-123456"


def test_infer_exports_its_spans_to_an_otlp_http_receiver(tmp_path: Path) -> None:
    rows = tmp_path / "in.jsonl"
    rows.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"secret {i}"}]}) + "\n"
                            for i in range(3)))  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    with OtlpReceiver() as receiver, FakeOpenAIChat(api_key=KEY) as server:
        assert isinstance(receiver, OtlpReceiver)
        env.update(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_TRACES_EXPORTER="otlp", MY_KEY=KEY)
        done = subprocess.run(
            [sys.executable, "-m", "infermux", "infer", "--engine", "REMOTE", "--model.model_name", "gpt-fake",
             "--remote_params.api_url", server.url + "/v1", "--remote_params.api_key_env_varname", "MY_KEY",
             "--input_path", str(rows), "--output_path", str(tmp_path / "out.jsonl")],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        (job,) = receiver.named("infermux.job")
        row_spans = receiver.named("infermux.row")
        attempts = receiver.named("POST")
    assert job.resource["service.name"] == "infermux" and job.scope == "infermux"
    assert job.attributes["infermux.rows.done"] == 3
    assert len(row_spans) == 3 and {r.parent_span_id for r in row_spans} == {job.span_id}
    assert len(attempts) == 3 and {a.parent_span_id for a in attempts} == {r.span_id for r in row_spans}
    assert {a.attributes["http.response.status_code"] for a in attempts} == {200}
    assert all(a.kind == 3 for a in attempts)  # SPAN_KIND_CLIENT
    assert len({s.trace_id for s in [job, *row_spans, *attempts]}) == 1
    for span in [job, *row_spans, *attempts]:
        text = json.dumps([span.attributes, span.events])
        assert KEY not in text and "secret" not in text
