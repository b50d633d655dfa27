"""The app in-process on the ECHO test engine (no model): routes, auth, errors, the batcher for local engines."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient, TestServer

from infermux.configs.generation_params import GenerationParams
from infermux.configs.model_params import ModelParams
from infermux.engines.registry import engine_class
from infermux.errors import RowError
from infermux.serve.app import create_app
from infermux.serve.batcher import needs_batcher

MODEL = "echo-model"


def echo_engine(batch_size: int = 16, **model_kwargs: Any) -> Any:
    generation = GenerationParams(batch_size=batch_size)  # the engine's chunk size: rows per engine call
    return engine_class("ECHO")(ModelParams(model_name=MODEL, model_kwargs=model_kwargs), generation_params=generation)


def run(check: Callable[[TestClient, Any], Awaitable[None]], engine: Any = None, **app_kw: Any) -> None:
    engine = engine or echo_engine()

    async def main() -> None:
        app = create_app(engine, served_model=MODEL, **app_kw)
        async with TestClient(TestServer(app)) as client:
            await check(client, engine)

    asyncio.run(main())


def body(text: str, **kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **kw}


def test_concurrent_requests_on_a_local_engine_share_engine_calls() -> None:
    engine = echo_engine()
    engine.delay = 0.2
    assert needs_batcher(engine) and not needs_batcher(echo_engine(concurrency=4))

    async def check(client: TestClient, engine: Any) -> None:
        replies = await asyncio.gather(*(client.post("/v1/chat/completions", json=body(f"q{i}")) for i in range(12)))
        answers = [(await r.json())["choices"][0]["message"]["content"] for r in replies]
        assert answers == [f"echo: q{i}" for i in range(12)]
        assert engine.calls <= 3  # one call that was running, then the rest together (not 12 calls)

    run(check, engine)


def test_streaming_on_an_engine_that_cannot_stream_sends_the_answer_as_one_chunk() -> None:
    async def check(client: TestClient, engine: Any) -> None:
        r = await client.post(
            "/v1/chat/completions", json=body("hi", stream=True, stream_options={"include_usage": True})
        )
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        events = [line[6:] for line in (await r.text()).splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "echo: hi"
        assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 2

    run(check)


def test_a_failed_row_is_an_error_and_the_next_request_is_served() -> None:
    async def check(client: TestClient, engine: Any) -> None:
        r = await client.post("/v1/chat/completions", json=body("please FAIL"))
        assert r.status == 500
        error = (await r.json())["error"]
        assert error["type"] == "server_error" and "asked to fail" in error["message"]
        r = await client.post("/v1/chat/completions", json=body("fine"))
        assert r.status == 200

    run(check)


def test_a_row_the_engine_refuses_is_the_same_400_with_or_without_the_batcher() -> None:
    """The row check runs before a request reaches the engine, on the batcher's path as on the stream's."""

    def refusing(concurrency: int) -> Any:
        engine = echo_engine(concurrency=concurrency)

        def check_conversation(conversation: Any) -> RowError | None:
            if "secret" in conversation.last_message.text:
                return RowError(kind="unsupported_input", message="ECHO does not repeat secrets.")
            return None

        engine.check_conversation = check_conversation
        return engine

    seen = []
    for engine in (refusing(1), refusing(4)):

        async def check(client: TestClient, engine: Any) -> None:
            calls = engine.calls
            for stream in (False, True):
                r = await client.post("/v1/chat/completions", json=body("my secret", stream=stream))
                assert r.status == 400
                seen.append((await r.json())["error"])
            assert engine.calls == calls  # refused before the engine ran
            r = await client.post("/v1/chat/completions", json=body("fine"))
            assert r.status == 200

        run(check, engine)
    assert needs_batcher(refusing(1)) and not needs_batcher(refusing(4))
    assert seen[0]["message"] == "ECHO does not repeat secrets." and seen[0]["code"] == "invalid_input"
    assert all(error == seen[0] for error in seen)


def test_auth_protects_the_api_and_metrics_not_health_or_page() -> None:
    async def check(client: TestClient, engine: Any) -> None:
        for path in ("/v1/models", "/metrics"):
            r = await client.get(path)
            assert r.status == 401 and (await r.json())["error"]["code"] == "invalid_api_key"
            r = await client.get(path, headers={"Authorization": "Bearer secret-key-1"})
            assert r.status == 200
        assert (await client.get("/health")).status == 200
        page = await client.get("/")
        assert page.status == 200 and "chat.js" in await page.text()
        assert (await client.get("/static/chat.js")).status == 200
        assert (await client.get("/static/../app.py")).status in (403, 404)

    run(check, api_key="secret-key-1")


def test_unknown_routes_methods_and_oversized_bodies_are_openai_errors() -> None:
    async def check(client: TestClient, engine: Any) -> None:
        r = await client.get("/v1/chat/completions")
        assert r.status == 405 and set((await r.json())["error"]) == {"message", "type", "param", "code"}
        r = await client.post("/v2/nothing", json={})
        assert r.status == 404
        r = await client.post("/v1/chat/completions", data=b"x" * 5000, headers={"Content-Type": "application/json"})
        assert r.status == 413 and (await r.json())["error"]["code"] == "request_too_large"
        assert (await client.post("/v1/chat/completions", json=body("ok"))).status == 200

    run(check, max_body=4096)


def test_a_request_abandoned_while_queued_is_never_run(tmp_path: Any) -> None:
    engine = echo_engine()
    engine.delay = 0.5
    engine.log = str(tmp_path / "seen.txt")

    async def check(client: TestClient, engine: Any) -> None:
        first = asyncio.ensure_future(client.post("/v1/chat/completions", json=body("first")))
        await asyncio.sleep(0.1)  # the engine is busy with "first"
        gone = asyncio.ensure_future(client.post("/v1/chat/completions", json=body("abandoned")))
        await asyncio.sleep(0.1)
        gone.cancel()  # the client goes away while its request waits for the engine
        assert (await first).status == 200
        await asyncio.sleep(0.8)
        assert (await client.post("/v1/chat/completions", json=body("next"))).status == 200
        assert (tmp_path / "seen.txt").read_text().split() == ["first", "next"]

    run(check, engine)


def test_a_non_streaming_client_that_disconnects_is_counted_as_499() -> None:
    """/metrics counts a client that went away (499) whether it asked for a stream or not (issue 23)."""
    engine = echo_engine()
    engine.delay = 0.5

    async def errors_499(client: TestClient) -> int:
        text = await (await client.get("/metrics")).text()
        line = next((x for x in text.splitlines() if x.startswith('infermux_errors_total{status="499"}')), None)
        return 0 if line is None else int(float(line.split()[-1]))

    async def main() -> None:
        app = create_app(engine, served_model=MODEL)
        # as `infermux serve` runs it (web.run_app(..., handler_cancellation=True))
        async with TestClient(TestServer(app, handler_cancellation=True)) as client:
            before = await errors_499(client)
            for stream in (False, True):
                gone = asyncio.ensure_future(client.post("/v1/chat/completions", json=body("bye", stream=stream)))
                await asyncio.sleep(0.15)  # the engine is answering
                gone.cancel()
                await asyncio.sleep(0.6)
            assert await errors_499(client) == before + 2
            assert (await client.post("/v1/chat/completions", json=body("next"))).status == 200

    asyncio.run(main())


def test_health_and_metrics_name_the_engine_as_configs_do_and_report_the_sampling() -> None:
    """The registry name (ECHO), not the class name (EchoEngine); /health says what sampling a request
    that sets none gets: the preset where one is given, else the config's values."""

    async def check(client: TestClient, engine: Any) -> None:
        health = await (await client.get("/health")).json()
        assert health["engine"] == "ECHO" and type(engine).__name__ != "ECHO"
        assert health["sampling"] == {"temperature": 0.7, "top_p": 1.0, "frequency_penalty": 0.3,
                                      "presence_penalty": 0.0}  # fmt: skip
        text = await (await client.get("/metrics")).text()
        assert f'infermux_info{{model="{MODEL}",engine="ECHO"}} 1' in text

    run(check, preset={"temperature": 0.7, "frequency_penalty": 0.3})


def test_the_preset_applies_only_to_requests_that_choose_no_sampling() -> None:
    from infermux.engines.capabilities import Capabilities
    from infermux.serve import wire

    caps = Capabilities(generation_params=frozenset({"temperature", "top_p", "frequency_penalty"}))
    preset = {"temperature": 0.7, "top_p": 0.9, "frequency_penalty": 0.3}

    def prepared(**kw: Any) -> GenerationParams:
        return wire.prepare(
            body("hi", **kw), served_model=MODEL, defaults=GenerationParams(), caps=caps, engine_name="ECHO",
            preset=preset,
        ).generation  # fmt: skip

    plain = prepared()
    assert (plain.temperature, plain.top_p, plain.frequency_penalty) == (0.7, 0.9, 0.3)
    greedy = prepared(temperature=0)  # the client asked for greedy: exactly that
    assert (greedy.temperature, greedy.top_p, greedy.frequency_penalty) == (0.0, 1.0, 0.0)


def test_batch_rows_go_through_the_engines_own_check_like_chat_requests(tmp_path: Any) -> None:
    """A Batch API row the engine's ``check`` refuses fails alone with the chat route's error; the rest run."""
    from infermux.errors import ConfigError

    base = engine_class("ECHO")

    class Picky(base):  # type: ignore[misc,valid-type]
        def _check(self, generation: GenerationParams, *, tools: bool = False) -> None:
            super()._check(generation, tools=tools)
            if generation.seed == 13:  # what only the engine knows (a grammar that cannot compile, ...)
                raise ConfigError("seed 13 is unlucky")

    engine = Picky(ModelParams(model_name=MODEL), generation_params=GenerationParams())
    chat = "/v1/chat/completions"
    lines = [
        {"custom_id": f"r{i}", "method": "POST", "url": chat, "body": body(f"row {i}", seed=13 if i == 1 else 1)}
        for i in range(3)
    ]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()

    async def check(client: TestClient, engine: Any) -> None:
        r = await client.post(chat, json=body("direct", seed=13))
        direct = (await r.json())["error"]
        assert r.status == 400 and "unlucky" in direct["message"]
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", data, filename="rows.jsonl")
        file_id = (await (await client.post("/v1/files", data=form)).json())["id"]
        created = {"input_file_id": file_id, "endpoint": chat, "completion_window": "24h"}
        batch = await (await client.post("/v1/batches", json=created)).json()
        for _ in range(200):
            batch = await (await client.get(f"/v1/batches/{batch['id']}")).json()
            if batch["status"] in ("completed", "failed"):
                break
            await asyncio.sleep(0.05)
        errors = await (await client.get(f"/v1/files/{batch['error_file_id']}/content")).text()
        assert batch["status"] == "completed" and batch["request_counts"] == {
            "total": 3,
            "completed": 2,
            "failed": 1,
        }, errors
        errors = await (await client.get(f"/v1/files/{batch['error_file_id']}/content")).text()
        (line,) = [json.loads(x) for x in errors.splitlines()]
        assert line["custom_id"] == "r1" and line["response"]["status_code"] == 400
        assert line["response"]["body"]["error"]["message"] == direct["message"]

    run(check, engine, batch_dir=tmp_path / "batches")
