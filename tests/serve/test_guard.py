"""Hostile requests on the app in-process (ECHO engine, no model): slow bodies, deep JSON, bad Unicode,
bad key bytes, size limits, and what a browser could send (foreign Host, Origin, text/plain bodies)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from infermux.serve.app import create_app
from infermux.serve.guard import Limits, host_allowed
from tests.serve.test_app import MODEL, body, echo_engine, run

CHAT = "/v1/chat/completions"


def nested(depth: int) -> str:
    """A JSON schema ``depth`` arrays deep, as text (``json.dumps`` itself stops near depth 1000)."""
    return '{"type": "array", "items": ' * depth + '{"type": "string"}' + "}" * depth


def with_schema(where: str, schema: str) -> bytes:
    head = '{"model": "echo-model", "messages": [{"role": "user", "content": "hi"}], '
    if where == "tools":
        return (
            head + '"tools": [{"type": "function", "function": {"name": "f", "parameters": ' + schema + "}}]}"
        ).encode()
    return (head + '"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": ' + schema
            + "}}}").encode()  # fmt: skip


async def raw(client: TestClient, request: bytes, timeout: float = 10) -> bytes:
    """Send ``request`` as is on a new connection and read until the server closes it (or ``timeout``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(request)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def test_deeply_nested_json_anywhere_is_a_400_not_a_500() -> None:
    async def check(client: TestClient, engine: Any) -> None:
        deep = b'{"model": "echo-model", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}"
        cases = [("parser", deep), ("tool parameters", with_schema("tools", nested(960))),
                 ("response_format", with_schema("response_format", nested(900))),
                 ("response_format", with_schema("response_format", nested(300)))]  # fmt: skip
        for name, data in cases:
            r = await client.post(CHAT, data=data, headers={"Content-Type": "application/json"})
            error = (await r.json())["error"]
            assert r.status == 400, (name, error)
            assert "nested" in error["message"], name
        ok = with_schema("tools", nested(20))  # within the bound: it gets as far as the capability check
        r = await client.post(CHAT, data=ok, headers={"Content-Type": "application/json"})
        assert (await r.json())["error"]["message"] == "ECHO cannot call tools."
        assert (await client.post(CHAT, json=body("still serving"))).status == 200

    run(check)


def test_a_lone_surrogate_anywhere_is_a_400_naming_where() -> None:
    async def check(client: TestClient, engine: Any) -> None:
        for text in ('"hi \\ud800 there"', '"\\udfff"'):
            data = '{"model": "echo-model", "messages": [{"role": "user", "content": ' + text + "}]}"
            r = await client.post(CHAT, data=data, headers={"Content-Type": "application/json"})
            error = (await r.json())["error"]
            assert r.status == 400 and error["param"] == "messages.0.content", error
            assert "surrogate" in error["message"]
        paired = '{"model": "echo-model", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'
        r = await client.post(CHAT, data=paired, headers={"Content-Type": "application/json"})
        assert r.status == 200 and (await r.json())["choices"][0]["message"]["content"] == "echo: \U0001f600"

    run(check)


def test_a_key_that_is_not_utf8_is_a_401() -> None:
    async def check(client: TestClient, engine: Any) -> None:
        for token in (b"\xff\xfe\xfd", b"secret-key-1\xff", "s\u00e9cret".encode("latin-1")):
            reply = await raw(client, b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                              b"Authorization: Bearer " + token + b"\r\n\r\n")  # fmt: skip
            head, _, rest = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 401"), head
            assert json.loads(rest)["error"]["code"] == "invalid_api_key"
        r = await client.get("/v1/models", headers={"Authorization": "Bearer secret-key-1"})
        assert r.status == 200

    run(check, api_key="secret-key-1")


def test_a_missing_static_file_is_the_documented_error_object() -> None:
    async def check(client: TestClient, engine: Any) -> None:
        for path in ("/static/nothing.js", "/static/..%2fapp.py", "/static/%2e%2e/guard.py"):
            r = await client.get(path)
            assert r.status == 404, path
            assert set((await r.json())["error"]) == {"message", "type", "param", "code"}
        for name in ("chat.js", "index.html"):
            assert (await client.get("/static/" + name)).status == 200

    run(check)


def test_message_count_size_and_total_limits() -> None:
    limits = Limits(max_messages=5, max_message_chars=100, max_prompt_chars=250)

    async def check(client: TestClient, engine: Any) -> None:
        many = {"model": MODEL, "messages": [{"role": "user", "content": "x"}] * 6}
        r = await client.post(CHAT, json=many)
        assert r.status == 400 and (await r.json())["error"]["code"] == "too_many_messages"
        r = await client.post(CHAT, json=body("y" * 101))
        error = (await r.json())["error"]
        assert r.status == 400 and error["code"] == "message_too_large" and error["param"] == "messages.0.content"
        parts = {"role": "user", "content": [{"type": "text", "text": "z" * 60}, {"type": "text", "text": "z" * 41}]}
        r = await client.post(CHAT, json={"model": MODEL, "messages": [parts]})
        assert r.status == 400  # text parts count together
        total = {"model": MODEL, "messages": [{"role": "user", "content": "w" * 90}] * 3}
        r = await client.post(CHAT, json=total)
        assert r.status == 413 and (await r.json())["error"]["code"] == "prompt_too_large"
        within = {"model": MODEL, "messages": [{"role": "user", "content": "w" * 80}] * 3}
        assert (await client.post(CHAT, json=within)).status == 200

    run(check, limits=limits)


def test_slow_bodies_are_cut_off_and_the_server_stays_responsive() -> None:
    engine = echo_engine()

    async def check(client: TestClient) -> None:
        async def trickle() -> tuple[bytes, float]:
            start = time.monotonic()
            reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n")  # fmt: skip
            try:
                for _ in range(1000):  # one byte every 50 ms: 50 s for the whole body
                    writer.write(b" ")
                    await writer.drain()
                    await asyncio.sleep(0.05)
                    if reader.at_eof() or reader._buffer:  # type: ignore[attr-defined]
                        break
            except ConnectionError:
                pass
            reply = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            return reply, time.monotonic() - start

        slow = [asyncio.ensure_future(trickle()) for _ in range(30)]
        await asyncio.sleep(0.3)
        start = time.monotonic()
        assert (await client.get("/health")).status == 200
        assert time.monotonic() - start < 1.0
        for reply, took in await asyncio.gather(*slow):
            assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
            assert b"request_timeout" in reply
            assert took < 6, took  # the limit is 1 s: cut off long before the 50 s the body would take
        assert (await client.post(CHAT, json=body("after"))).status == 200

    async def main() -> None:
        app = create_app(engine, served_model=MODEL, limits=Limits(body_timeout=1.0))
        async with TestClient(TestServer(app)) as client:
            await check(client)

    asyncio.run(main())


def test_host_names_that_may_reach_the_server() -> None:
    allowed = frozenset({"box.lan"})
    for host in (None, "127.0.0.1:8000", "[::1]:8000", "localhost", "LOCALHOST:80", "app.localhost:8000",
                 "10.1.2.3", "box.lan:8000"):  # fmt: skip
        assert host_allowed(host, allowed), host
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil.example:8000"):
        assert not host_allowed(host, allowed), host
    assert host_allowed("anything.example", frozenset({"*"}))


def test_foreign_hosts_origins_and_non_json_bodies_are_refused_everywhere() -> None:
    async def check(client: TestClient, engine: Any) -> None:
        calls = engine.calls
        evil = {"Host": "rebind.evil.example:8000"}
        for path in ("/v1/models", "/metrics", "/health", "/"):
            r = await client.get(path, headers=evil)
            assert r.status == 403 and (await r.json())["error"]["code"] == "host_not_allowed", path
        r = await client.post(CHAT, json=body("hi"), headers=evil)
        assert r.status == 403
        # What a page on another site can send without a CORS preflight: a text/plain or form POST.
        for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            r = await client.post(CHAT, data=json.dumps(body("hi")), headers={"Content-Type": kind})
            assert r.status == 415 and (await r.json())["error"]["code"] == "unsupported_media_type", kind
        r = await client.post(CHAT, json=body("hi"), headers={"Origin": "https://evil.example"})
        assert r.status == 403 and (await r.json())["error"]["code"] == "origin_not_allowed"
        r = await client.get("/metrics", headers={"Origin": "https://evil.example"})
        assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers
        preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        r = await client.options(CHAT, headers=preflight)
        assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers
        assert engine.calls == calls  # nothing reached the engine
        own = f"http://127.0.0.1:{client.port}"  # the chat page's own fetches carry its origin
        r = await client.post(CHAT, json=body("same origin"), headers={"Origin": own})
        assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers

    run(check)


def test_cors_allow_list() -> None:
    app_origin = "https://app.example"

    async def check(client: TestClient, engine: Any) -> None:
        preflight = {"Origin": app_origin, "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "content-type, authorization"}  # fmt: skip
        r = await client.options(CHAT, headers=preflight)
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == app_origin
        assert "authorization" in r.headers["Access-Control-Allow-Headers"].lower()
        for stream in (False, True):
            r = await client.post(CHAT, json=body("hi", stream=stream), headers={"Origin": app_origin})
            assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == app_origin
            assert "echo: hi" in await r.text()
        r = await client.post(CHAT, json=body("hi"), headers={"Origin": "https://other.example"})
        assert r.status == 403

    run(check, cors_origins=[app_origin])
