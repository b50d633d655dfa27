"""``fallbacks:``: rows the job's engine cannot answer for a reason another engine may not share go to the
next engine. Real stub servers on 127.0.0.1: the first answers every request 429 ``insufficient_quota``
(OpenAI's body) and 400 to the bad rows; the second answers everything."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infermux.configs import InferenceConfig, ModelParams, RemoteParams
from infermux.configs.fallback_params import FallbackConfig
from infermux.engines.fallback import FallbackEngine, can_fall_back
from infermux.engines.registry import build_engine
from infermux.jobs.api import run_config_job
from infermux.types import Conversation
from tests.servers import free_port, stub_server


@pytest.fixture(scope="module")
def quota_stub() -> Iterator[str]:
    with stub_server("--quota-exhausted", "--reject-text", "BAD") as url:
        yield url


@pytest.fixture
def good_stub() -> Iterator[str]:
    with stub_server() as url:
        yield url


def _log(url: str) -> list[str]:
    with urllib.request.urlopen(url + "/_stub/log", timeout=10) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def _rows(path: Path) -> list[str]:
    texts = [f"BAD {i}" if i % 5 == 3 else f"row {i}" for i in range(25)]
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": t}]}) + "\n" for t in texts))
    return texts


def _config(primary: str, fallback: str, tmp_path: Path, **extra: Any) -> InferenceConfig:
    return InferenceConfig(
        engine="REMOTE_VLLM",
        model=ModelParams(model_name="our-llama"),
        remote_params=RemoteParams(api_url=primary, num_workers=4, max_retries=1, retry_backoff_base=0.01),
        fallbacks=[
            FallbackConfig(
                engine="OPENAI",
                model=ModelParams(model_name="gpt-4o-mini"),
                remote_params=RemoteParams(api_url=fallback + "/v1", api_key="sk-fallback-test-0000", num_workers=4),
            )
        ],
        input_path=str(tmp_path / "in.jsonl"),
        output_path=str(tmp_path / "out.jsonl"),
        **extra,
    )


def test_quota_rows_fall_back_and_bad_requests_do_not(quota_stub: str, good_stub: str, tmp_path: Path) -> None:
    texts = _rows(tmp_path / "in.jsonl")
    config = _config(quota_stub, good_stub, tmp_path)
    report = asyncio.run(run_config_job(config))
    assert report.failed == 5  # the bad rows, once each
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    answered = {r["messages"][0]["content"]: r for r in out if r["messages"][-1]["role"] == "assistant"}
    assert sorted(answered) == sorted(t for t in texts if not t.startswith("BAD"))
    for text, row in answered.items():
        assert row["messages"][-1]["content"] == f"echo: {text}"
        assert row["metadata"]["answered_by"] == {"engine": "OPENAI", "model": "gpt-4o-mini"}
        assert row["metadata"]["cost_usd"] > 0  # priced as gpt-4o-mini, the model that answered
    assert report.cost.priced == 20
    errors = [json.loads(line) for line in Path(report.errors_path or "").read_text().splitlines()]
    assert len(errors) == 5
    assert all(e["status"] == 400 and e["kind"] == "invalid_request" for e in errors), errors
    assert not any(t.startswith("BAD") for t in _log(good_stub))  # a bad request never falls back
    assert sorted(_log(good_stub)) == sorted(answered)  # and every other row fell back once

    # Resume: the answered rows are done (the fallbacks are part of the fingerprint); only the bad rows run.
    again = asyncio.run(run_config_job(config))
    assert again.resumed == 20 and again.failed == 5
    assert len(_log(good_stub)) == 20
    without = config.model_copy(update={"fallbacks": []})
    assert without.fingerprint() != config.fingerprint()


def test_a_server_that_is_down_falls_back_and_rests(good_stub: str, tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    config = _config(down, good_stub, tmp_path)
    engine = build_engine(config)
    assert isinstance(engine, FallbackEngine)
    rows = [Conversation.model_validate({"messages": [{"role": "user", "content": f"q{i}"}]}) for i in range(12)]
    out = engine.infer(rows)
    assert [o.messages[-1].content for o in out] == [f"echo: q{i}" for i in range(12)]
    assert {o.metadata["answered_by"]["engine"] for o in out} == {"OPENAI"}
    assert engine.members[0].health.rests >= 1  # the first engine rests: later rows went straight on


def test_chat_and_serve_streams_fall_back(quota_stub: str, good_stub: str, tmp_path: Path) -> None:
    engine = build_engine(_config(quota_stub, good_stub, tmp_path))
    row = Conversation.model_validate({"messages": [{"role": "user", "content": "hello"}]})

    async def collect() -> list[Any]:
        return [event async for event in engine.stream(row)]

    events = asyncio.run(collect())
    final = events[-1]
    assert final.conversation is not None and final.conversation.messages[-1].content == "echo: hello"
    assert final.metadata["answered_by"]["engine"] == "OPENAI"


def test_which_failures_fall_back() -> None:
    assert can_fall_back("quota_exceeded", 429) and can_fall_back("rate_limited", 429)
    assert can_fall_back("connection_error", None) and can_fall_back("http_error", 503)
    assert not can_fall_back("invalid_request", 400) and not can_fall_back("context_length_exceeded", 400)
    assert not can_fall_back("authentication", 401) and not can_fall_back("http_error", 404)


def test_a_fallback_config_error_names_the_fallback(tmp_path: Path) -> None:
    from infermux.errors import ConfigError

    config = InferenceConfig(
        engine="REMOTE_VLLM",
        model=ModelParams(model_name="m"),
        remote_params=RemoteParams(api_url="http://127.0.0.1:9"),
        fallbacks=[FallbackConfig(engine="REMOTE_VLLM", model=ModelParams(model_name="m2"))],
    )
    with pytest.raises(ConfigError, match=r"fallbacks\[0\] \(REMOTE_VLLM\)"):
        build_engine(config)
