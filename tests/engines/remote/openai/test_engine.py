"""REMOTE against real servers: llama_cpp.server on the default model, and the fault proxy in front of
the stub server for the durability checks."""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from infermux.configs import GenerationParams, InferenceConfig, ModelParams, RemoteParams
from infermux.engines.registry import build_engine
from infermux.engines.remote.openai.engine import RemoteInferenceEngine
from infermux.errors import ConfigError
from infermux.types import Conversation
from tests.engines.remote.handlers import EchoHandler
from tests.servers import fault_proxy, llama_cpp_server, stub_server

IN_PROCESS = "http://in-process.invalid/v1"  # never resolved: the engine's transport_handler answers


def conv(text: str, system: str | None = None) -> Conversation:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": text})
    return Conversation.model_validate({"messages": messages})


def _post(url: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


# ---------------------------------------------------------------------- a real inference server


@pytest.fixture(scope="module")
def llama_server() -> Any:
    pytest.importorskip("llama_cpp.server", reason="needs llama-cpp-python[server]")
    with llama_cpp_server() as url:
        yield url


@pytest.mark.slow
def test_round_trip_matches_a_direct_request_to_the_same_server(llama_server: str) -> None:
    prompts = ["What is 2+2?", "Name a colour.", "Say hello."]
    engine = RemoteInferenceEngine(
        ModelParams(model_name="smollm2"),
        generation_params=GenerationParams(max_new_tokens=24),
        remote_params=RemoteParams(api_url=llama_server, num_workers=2),
    )
    out = engine.infer([conv(p) for p in prompts])
    for prompt, answered in zip(prompts, out, strict=True):
        direct = _post(
            llama_server + "/v1/chat/completions",
            {"model": "smollm2", "messages": [{"role": "user", "content": prompt}], "max_tokens": 24, "temperature": 0},
        )
        assert answered.messages[-1].role.value == "assistant"
        assert answered.messages[-1].content == direct["choices"][0]["message"]["content"]
        meta = answered.metadata
        assert meta["finish_reason"] in ("stop", "length")
        assert meta["usage"]["completion_tokens"] > 0 and meta["usage"]["prompt_tokens"] > 0
        assert "error" not in meta
    assert engine.last_report is not None and engine.last_report.completion_tokens > 0


@pytest.mark.slow
@pytest.mark.parametrize("suffix", ["", "/v1", "/v1/chat/completions"])
def test_api_url_as_base_or_full_endpoint(llama_server: str, suffix: str) -> None:
    config = InferenceConfig(
        model=ModelParams(model_name="smollm2"),
        engine="REMOTE",
        generation=GenerationParams(max_new_tokens=4),
        remote_params=RemoteParams(api_url=llama_server + suffix),
    )
    (answered,) = build_engine(config).infer([conv("Hi")])
    assert "error" not in answered.metadata and answered.messages[-1].role.value == "assistant"


# ---------------------------------------------------------------------- durability under faults


@pytest.fixture(scope="module")
def fast_stub() -> Any:
    with stub_server("--latency-ms", "2") as url:
        yield url


@pytest.mark.slow
def test_1000_rows_through_20_percent_faults_none_lost_none_duplicated_order_kept(
    fast_stub: str, tmp_path: Path
) -> None:
    rows = [conv(f"row {i}") for i in range(1000)]
    kinds = "429,500,503,drop,timeout,truncate,slow"
    with fault_proxy(fast_stub, "--fault-rate", "0.2", "--faults", kinds, "--seed", "4", "--hang-s", "2") as proxy:
        engine = RemoteInferenceEngine(
            ModelParams(model_name="stub"),
            remote_params=RemoteParams(
                api_url=proxy + "/v1", num_workers=50, max_retries=10, connection_timeout=1.0, retry_backoff_base=0.05
            ),
        )
        output = tmp_path / "out.jsonl"
        out = engine.infer(rows, InferenceConfig(model=ModelParams(model_name="stub"), output_path=str(output)))
        with urllib.request.urlopen(proxy + "/_proxy/stats") as resp:
            stats = json.loads(resp.read())
    assert sum(stats["faults"].values()) >= 150  # the faults really happened
    assert [c.messages[-1].content for c in out] == [f"echo: row {i}" for i in range(1000)]
    lines = output.read_text().splitlines()
    assert len(lines) == 1000  # none lost, none duplicated
    assert [json.loads(line)["messages"][-1]["content"] for line in lines] == [f"echo: row {i}" for i in range(1000)]
    assert engine.last_report is not None and engine.last_report.failed == 0


@pytest.mark.slow
def test_a_20_percent_transient_fault_storm_loses_no_row_with_default_settings(tmp_path: Path) -> None:
    # 1000 rows, 50 workers, a 20 ms server; one reply in five is a 429 (Retry-After: 0), a 500, a 503,
    # a dropped connection or truncated JSON. Only num_workers is set: every retry setting is the default.
    # (With this seed some rows meet four transient faults in a row: one round of max_retries lost them.)
    rows = [conv(f"row {i}") for i in range(1000)]
    with stub_server("--latency-ms", "20", "--fault-rate", "0.2", "--seed", "11") as url:
        engine = RemoteInferenceEngine(
            ModelParams(model_name="stub"), remote_params=RemoteParams(api_url=url, num_workers=50)
        )
        output = tmp_path / "out.jsonl"
        started = time.monotonic()
        engine.infer(rows, InferenceConfig(model=ModelParams(model_name="stub"), output_path=str(output)))
        elapsed = time.monotonic() - started
        with urllib.request.urlopen(url + "/_stub/stats") as resp:
            stats = json.loads(resp.read())
    print(f"storm: 1000 rows in {elapsed:.1f}s, {stats['requests']} requests, faults {stats['faults']}")
    assert sum(stats["faults"].values()) >= 150  # the storm really happened
    assert engine.last_report is not None and engine.last_report.failed == 0
    answers = [json.loads(line)["messages"][-1]["content"] for line in output.read_text().splitlines()]
    assert answers == [f"echo: row {i}" for i in range(1000)]  # each row answered once, in order
    assert not (tmp_path / "out.jsonl.errors.jsonl").exists() or not (tmp_path / "out.jsonl.errors.jsonl").read_text()


def test_a_permanent_failure_is_a_row_error_not_a_crash() -> None:
    engine = RemoteInferenceEngine(
        ModelParams(model_name="stub"),
        remote_params=RemoteParams(api_url=IN_PROCESS, max_retries=1, retry_backoff_base=0.01),
    )
    engine.transport_handler = EchoHandler(faults=(500,), max_faults_per_body=1000)
    (answered,) = engine.infer([conv("x")])
    error = answered.metadata["error"]
    assert error["status"] == 500 and error["retryable"] is True and len(answered.messages) == 1


def test_api_key_never_appears_in_errors_outputs_logs_or_reprs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = "sk-live-TOPSECRET-abcdef123456"
    caplog.set_level(logging.DEBUG)
    with stub_server("--require-key", "sk-right-key-000000") as url:
        engine = RemoteInferenceEngine(
            ModelParams(model_name="stub"), remote_params=RemoteParams(api_url=url, api_key=key)
        )
        output = tmp_path / "out.jsonl"
        out = engine.infer([conv("x")], InferenceConfig(model=ModelParams(model_name="stub"), output_path=str(output)))
    assert out[0].metadata["error"]["status"] == 401  # the stub echoed the key back in its message
    texts = [json.dumps(out[0].to_json_dict()), repr(engine), str(engine.headers), repr(engine.remote_params)]
    texts += [p.read_text() for p in tmp_path.iterdir()]
    texts.append(caplog.text)
    for text in texts:
        assert key not in text


def test_remote_needs_an_api_url() -> None:
    # Built without a URL (a config passed to infer may bring one: issue 10 item 11), but a job on the
    # engine's own settings stops before sending anything.
    engine = RemoteInferenceEngine(ModelParams(model_name="m"))
    with pytest.raises(ConfigError, match="api_url"):
        engine.infer([conv("x")])


def test_engine_without_url_runs_with_the_url_of_the_config_passed_to_infer(fast_stub: str) -> None:
    engine = RemoteInferenceEngine(ModelParams(model_name="m"))
    config = InferenceConfig(model=ModelParams(model_name="stub"), remote_params=RemoteParams(api_url=fast_stub))
    (answer,) = engine.infer([conv("fine")], config)
    assert answer.messages[-1].content == "echo: fine"


def test_unreadable_image_fails_its_row_only(tmp_path: Path) -> None:
    bad = Conversation.model_validate(
        {"messages": [{"role": "user", "content": [{"type": "image_path", "content": str(tmp_path / "gone.png")}]}]}
    )
    engine = RemoteInferenceEngine(ModelParams(model_name="stub"), remote_params=RemoteParams(api_url=IN_PROCESS))
    engine.transport_handler = EchoHandler()
    good, failed = engine.infer([conv("fine"), bad])
    assert good.messages[-1].content == "echo: fine"
    assert "gone.png" in failed.metadata["error"]["message"]
