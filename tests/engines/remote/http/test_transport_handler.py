"""``Transport(handler=...)`` and ``RemoteEngine.transport_handler``: remote behaviour without a socket.

The socket is made unusable in these tests (aiohttp's session and connector raise), so each one also
shows that the in-process path opens no connection.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from infermux.configs import GenerationParams, ModelParams, RemoteParams
from infermux.engines.remote.anthropic import AnthropicInferenceEngine
from infermux.engines.remote.http.transport import HttpRequest, HttpResponse, Transport, TransportSettings
from infermux.engines.remote.openai.engine import RemoteInferenceEngine
from infermux.errors import RemoteError
from infermux.jobs import provider_batch
from infermux.types import Conversation
from tests.engines.remote.handlers import EchoHandler

URL = "http://in-process.invalid/v1/chat/completions"


@pytest.fixture(autouse=True)
def no_sockets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an in-process transport opened a connection")

    monkeypatch.setattr(aiohttp, "ClientSession", refuse)
    monkeypatch.setattr(aiohttp, "TCPConnector", refuse)
    yield


def _conv(text: str) -> Conversation:
    return Conversation.model_validate({"messages": [{"role": "user", "content": text}]})


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return b"data: " + json.dumps({"object": "chat.completion.chunk", "model": "m", "choices": [choice]}).encode()


async def _stream_body() -> AsyncIterator[bytes]:
    """An answer streamed as SSE, cut into chunks that split lines and events anywhere."""
    data = b"\n\n".join(
        [_chunk({"role": "assistant", "content": "Hel"}), _chunk({"content": "lo, wor"}), _chunk({"content": "ld"}),
         _chunk({}, "stop"), b"data: [DONE]"]
    ) + b"\n\n"  # fmt: skip
    for start in range(0, len(data), 7):
        await asyncio.sleep(0)
        yield data[start : start + 7]


def test_a_plain_function_answers_send_with_status_headers_and_body() -> None:
    seen: list[HttpRequest] = []

    def handler(request: HttpRequest) -> HttpResponse:  # not async: a plain callable works too
        seen.append(request)
        return HttpResponse(200, b'{"answer": 42}', {"Content-Type": "application/json"})

    async def go() -> Any:
        async with Transport(TransportSettings(), handler=handler) as transport:
            return await transport.send(HttpRequest.json(URL, {"q": 1}, {"X-Test": "yes"}), lambda d: d["answer"])

    assert asyncio.run(go()) == 42
    assert seen[0].url == URL and seen[0].body == b'{"q":1}' and seen[0].headers["X-Test"] == "yes"


def test_a_dropped_connection_and_a_silent_server_are_retried_like_on_a_socket() -> None:
    handler = EchoHandler(faults=("drop", "timeout"), max_faults_per_body=2)
    settings = TransportSettings(max_retries=2, connection_timeout=0.2, retry_backoff_base=0.01)

    async def go(text: str) -> Any:
        async with Transport(settings, handler=handler) as transport:
            body = {"messages": [{"role": "user", "content": text}]}
            return await transport.send(
                HttpRequest.json(URL, body, {}), lambda d: d["choices"][0]["message"]["content"]
            )

    assert asyncio.run(go("again")) == "echo: again"
    assert handler.served == {"drop": 1, "timeout": 1}
    handler.max_faults_per_body = 10
    with pytest.raises(RemoteError) as info:
        asyncio.run(go("never"))
    assert info.value.retryable and "gave up after 3 failed attempts" in str(info.value)


def test_an_engine_streams_through_its_handler() -> None:
    async def handler(request: HttpRequest) -> HttpResponse:
        assert json.loads(request.body)["stream"] is True
        return HttpResponse(200, _stream_body(), {"Content-Type": "text/event-stream"})

    engine = RemoteInferenceEngine(ModelParams(model_name="m"), remote_params=RemoteParams(api_url=URL))
    engine.transport_handler = handler

    async def go() -> tuple[list[str], Conversation | None]:
        deltas, final = [], None
        async for event in engine.stream(_conv("hi"), GenerationParams(max_new_tokens=8)):
            if event.delta:
                deltas.append(event.delta)
            if event.conversation is not None:
                final = event.conversation
        return deltas, final

    deltas, final = asyncio.run(go())
    assert deltas == ["Hel", "lo, wor", "ld"]
    assert final is not None and final.last_message.text == "Hello, world" and final.finish_reason == "stop"


def test_a_stream_that_stalls_breaks_off_after_the_read_timeout() -> None:
    async def stalled() -> AsyncIterator[bytes]:
        yield _chunk({"content": "part"}) + b"\n\n"
        await asyncio.sleep(3600)
        yield b""

    async def go() -> list[str]:
        settings = TransportSettings(connection_timeout=0.2)
        got: list[str] = []
        async with Transport(settings, handler=lambda request: HttpResponse(200, stalled())) as transport:
            async for event in transport.stream(HttpRequest.json(URL, {}, {})):
                got.append(event.data)
        return got

    with pytest.raises(RemoteError, match="broke off"):
        asyncio.run(go())


def test_engine_rows_and_batch_calls_go_to_the_handler() -> None:
    engine = RemoteInferenceEngine(ModelParams(model_name="m"), remote_params=RemoteParams(api_url=URL))
    engine.transport_handler = EchoHandler()
    (answer,) = engine.infer([_conv("no socket")])
    assert answer.last_message.text == "echo: no socket"

    listed = {"data": [{"id": "msgbatch_1", "processing_status": "ended", "request_counts": {"succeeded": 2}}],
              "has_more": False, "last_id": "msgbatch_1"}  # fmt: skip
    claude = AnthropicInferenceEngine(
        ModelParams(model_name="claude-test"),
        remote_params=RemoteParams(api_url="http://in-process.invalid", api_key="k"),
    )
    paths: list[str] = []

    def batches(request: HttpRequest) -> HttpResponse:
        paths.append(f"{request.method} {request.url}")
        return HttpResponse.json(listed)

    claude.transport_handler = batches
    assert provider_batch.list_batches(claude, 5) == listed["data"]
    assert paths == ["GET http://in-process.invalid/v1/messages/batches?limit=5"]
