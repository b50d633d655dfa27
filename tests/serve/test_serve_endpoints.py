"""``infermux serve`` as a gateway over several servers (``remote_params.endpoints``) and with a fallback
engine (``fallbacks:``): requests are answered by whichever server or engine can (real stub servers)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serve.running import Served, serve
from tests.servers import free_port, stub_server

pytestmark = pytest.mark.slow


def _ask(served: Served, text: str, stream: bool = False) -> str:
    body = {"model": "m", "messages": [{"role": "user", "content": text}], "stream": stream}
    req = urllib.request.Request(served.api + "/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=60) as resp:
        raw = resp.read().decode()
    if not stream:
        return str(json.loads(raw)["choices"][0]["message"]["content"])
    chunks = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: {")]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def _log(url: str) -> list[Any]:
    with urllib.request.urlopen(url + "/_stub/log", timeout=10) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def live() -> Iterator[str]:
    with stub_server() as url:
        yield url


def test_a_gateway_over_endpoints_answers_from_the_live_one(live: str, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    config = tmp_path / "gw.yaml"
    config.write_text(
        "engine: REMOTE_VLLM\nmodel:\n  model_name: m\nremote_params:\n  retry_backoff_base: 0.01\n"
        f"  endpoints:\n    - url: {dead}\n    - url: {live}/v1\n"
    )
    with serve("-c", str(config), timeout=120) as served:
        answers = [_ask(served, f"q{i}", stream=i % 2 == 1) for i in range(6)]
    assert answers == [f"echo: q{i}" for i in range(6)]
    assert {f"q{i}" for i in range(6)} <= set(_log(live))


def test_a_gateway_falls_back_to_the_next_engine(live: str, tmp_path: Path) -> None:
    with stub_server("--quota-exhausted") as out_of_quota:
        config = tmp_path / "gw.yaml"
        config.write_text(
            f"engine: REMOTE_VLLM\nmodel:\n  model_name: m\nremote_params:\n  api_url: {out_of_quota}/v1\n"
            f"fallbacks:\n  - engine: REMOTE\n    model:\n      model_name: m2\n"
            f"    remote_params:\n      api_url: {live}/v1\n"
        )
        with serve("-c", str(config), timeout=120) as served:
            answers = [_ask(served, f"f{i}", stream=i % 2 == 1) for i in range(4)]
        assert answers == [f"echo: f{i}" for i in range(4)]
        assert {f"f{i}" for i in range(4)} <= set(_log(out_of_quota))  # tried first, every time
