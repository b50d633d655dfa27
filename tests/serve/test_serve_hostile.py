"""``infermux serve`` on the default model (LLAMACPP) under requests meant to take it down: a schema
that would compile to an endless grammar, a prompt that takes seconds to build, bad Unicode. Memory and
time are measured on the server process, with generous limits."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.serve.running import Served, serve

pytest.importorskip("llama_cpp")

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def server() -> Iterator[Served]:
    with serve() as served:
        yield served


def rss_mib(served: Served) -> float:
    for line in open(f"/proc/{served.proc.pid}/status"):  # noqa: SIM115
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def post(served: Served, payload: Any, timeout: float = 120) -> tuple[int, dict[str, Any]]:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(served.api + "/chat/completions", data=data, method="POST")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def health_latency(served: Served) -> float:
    start = time.monotonic()
    with urllib.request.urlopen(served.url + "/health", timeout=30) as resp:
        assert resp.status == 200
    return time.monotonic() - start


def test_schemas_that_would_compile_without_end_are_refused_fast(server: Served) -> None:
    huge = {"type": "array", "items": {"type": "integer"}, "minItems": 1_000_000_000}
    tool = {"type": "function", "function": {"name": "fill", "parameters": {
        "type": "object", "properties": {"xs": huge}, "required": ["xs"]}}}  # fmt: skip
    before = rss_mib(server)
    asks = [
        {"response_format": {"type": "json_schema", "json_schema": {"name": "xs", "schema": huge}}},
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "s", "schema": {"type": "string", "pattern": "(a{1000}){1000}"}},
            }
        },
        {"tools": [tool], "tool_choice": {"type": "function", "function": {"name": "fill"}}},  # a forced call
        {"tools": [tool], "tool_choice": "required", "stream": True},
    ]
    for extra in asks:
        start = time.monotonic()
        status, reply = post(server, {"model": MODEL, "messages": [{"role": "user", "content": "Numbers."}],
                                      "max_tokens": 8, **extra})  # fmt: skip
        took = time.monotonic() - start
        assert status == 400, reply
        assert "limit of 100000 grammar elements" in reply["error"]["message"], reply
        assert took < 10, took  # without the bound: gigabytes per second until the kernel kills the server
    grown = rss_mib(server) - before
    assert grown < 300, f"the server grew by {grown:.0f} MiB"
    # A schema within the bounds is still compiled and enforced.
    fine = {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 3}
    status, reply = post(server, {"model": MODEL, "messages": [{"role": "user", "content": "Three numbers."}],
                                  "max_tokens": 40, "temperature": 0,
                                  "response_format": {"type": "json_schema", "json_schema": {"name": "xs", "schema": fine}}})  # fmt: skip
    assert status == 200, reply
    assert isinstance(json.loads(reply["choices"][0]["message"]["content"]), list)
    assert server.alive()


def test_health_answers_within_a_second_while_a_huge_prompt_is_built(server: Served) -> None:
    status, worst, took = health_during_huge_prompt(server)
    assert status == 400  # longer than the model's context
    assert worst < 1.0, f"/health took {worst:.2f}s while the prompt was built ({took:.1f}s)"
    assert took > 0.5  # the request did take time: /health was asked while it ran


def test_native_refuses_endless_schemas_and_builds_prompts_off_the_loop() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    with serve("--engine", "NATIVE", "--model.model_name", MODEL, "--model.model_max_length", "512") as served:
        huge = {"type": "array", "items": {"type": "integer"}, "minItems": 1_000_000_000}
        before = rss_mib(served)
        start = time.monotonic()
        status, reply = post(served, {"model": MODEL, "messages": [{"role": "user", "content": "Numbers."}],
                                      "max_tokens": 8, "response_format": {"type": "json_schema",
                                      "json_schema": {"name": "xs", "schema": huge}}})  # fmt: skip
        assert status == 400 and "grammar elements" in reply["error"]["message"], reply
        assert time.monotonic() - start < 10 and rss_mib(served) - before < 300
        status, worst, took = health_during_huge_prompt(served)
        assert status == 200  # NATIVE keeps the prompt's last model_max_length tokens
        assert worst < 1.0, f"/health took {worst:.2f}s while the prompt was built ({took:.1f}s)"


def health_during_huge_prompt(served: Served) -> tuple[int, float, float]:
    """Send 2,000 messages (3 MB of text: within the limits, and seconds of chat template and tokenizing)
    and ask ``/health`` until the answer comes: its status, the slowest ``/health`` and the time taken."""
    messages = [{"role": ("user", "assistant")[i % 2], "content": f"message {i} " + "lorem ipsum " * 125}
                for i in range(1999)]  # fmt: skip
    payload = {"model": MODEL, "messages": messages, "max_tokens": 4}
    result: dict[str, Any] = {}

    def send() -> None:
        result["status"], result["reply"] = post(served, payload, timeout=300)

    worker = threading.Thread(target=send)
    start = time.monotonic()
    worker.start()
    worst = 0.0
    while worker.is_alive():
        worst = max(worst, health_latency(served))
        time.sleep(0.05)
    worker.join()
    return result["status"], worst, time.monotonic() - start


def test_a_lone_surrogate_is_a_400_and_the_server_keeps_serving(server: Served) -> None:
    raw = b'{"model": "%s", "messages": [{"role": "user", "content": "hi \\ud800"}]}' % MODEL.encode()
    status, reply = post(server, raw)
    assert status == 400 and reply["error"]["param"] == "messages.0.content", reply
    status, reply = post(server, {"model": MODEL, "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 4})
    assert status == 200
