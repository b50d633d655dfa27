"""``infermux serve`` on the default model (LLAMACPP), driven by the official openai SDK and raw HTTP."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import urllib.request
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.greedy import LLAMACPP_SLACK, assert_same_or_near_tie
from tests.logprob_bytes import SPLIT_PROMPT, SPLIT_TOKENS, assert_exact_bytes
from tests.serve.running import Served, serve

openai = pytest.importorskip("openai")
pytest.importorskip("llama_cpp")

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
PROMPTS = [f"Write one short sentence about the number {i}." for i in range(16)]


@pytest.fixture(scope="module")
def server() -> Iterator[Served]:
    with serve() as served:  # no config: the embedded default model on LLAMACPP
        yield served


def client(server: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=600)


def ask(server: Served, prompt: str, **kw: object) -> str:
    reply = client(server).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=24, temperature=0, **kw
    )
    return reply.choices[0].message.content or ""


def metric(server: Served, name: str) -> float:
    with urllib.request.urlopen(server.url + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_sync_sdk_answers_with_usage_and_models(server: Served) -> None:
    sdk = client(server)
    assert [m.id for m in sdk.models.list().data] == [MODEL]
    reply = sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0
    )
    assert reply.object == "chat.completion" and reply.model == MODEL
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and reply.usage.prompt_tokens > 0 and 0 < reply.usage.completion_tokens <= 8


def test_streaming_sdk_matches_non_streaming_and_reports_usage(server: Served) -> None:
    whole = ask(server, PROMPTS[0])
    stream = client(server).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": PROMPTS[0]}],
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # streamed, not at once
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")


def test_async_sdk_and_stop_and_seed(server: Served) -> None:
    async def run() -> str:
        sdk = openai.AsyncOpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=600)
        reply = await sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "system", "content": "You count."}, {"role": "user", "content": "Count: 1, 2, 3,"}],
            max_tokens=30,
            stop=["5"],
            seed=3,
            temperature=0,
        )
        await sdk.close()
        return reply.choices[0].message.content or ""

    text = asyncio.run(run())
    assert "5" not in text


def test_n_seeded_choices_and_logprobs(server: Served) -> None:
    sdk = client(server)
    messages = [{"role": "user", "content": "Name a fruit."}]
    settings = {"model": MODEL, "messages": messages, "max_tokens": 12, "temperature": 1.0, "seed": 11}
    reply = sdk.chat.completions.create(n=3, **settings)  # type: ignore[call-overload]
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert all(c.message.content and c.finish_reason in ("stop", "length") for c in reply.choices)
    assert all(c.logprobs is None for c in reply.choices)
    again = sdk.chat.completions.create(n=3, **settings)  # type: ignore[call-overload]
    assert [c.message.content for c in again.choices] == [c.message.content for c in reply.choices]  # seeded
    assert reply.usage is not None and reply.usage.completion_tokens >= 3

    k = 3
    scored = sdk.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=12, temperature=0, logprobs=True, top_logprobs=k
    )  # type: ignore[call-overload]
    (choice,) = scored.choices
    assert choice.logprobs is not None and choice.logprobs.content
    tokens = choice.logprobs.content
    assert "".join(t.token for t in tokens) == choice.message.content
    assert all(len(t.top_logprobs) == k and t.logprob <= 0 for t in tokens)
    assert all(t.bytes == list(t.token.encode()) for t in tokens)
    assert all(t.top_logprobs[0].logprob >= t.top_logprobs[-1].logprob for t in tokens)
    assert all(t.token == t.top_logprobs[0].token for t in tokens)  # greedy: the chosen token is the likeliest

    # Streamed: each choice arrives whole, with its index (and its log-probabilities).
    stream = sdk.chat.completions.create(n=2, logprobs=True, stream=True, **settings)  # type: ignore[call-overload]
    chunks = [c for c in stream if c.choices]
    texts = {0: "", 1: ""}
    for c in chunks:
        texts[c.choices[0].index] += c.choices[0].delta.content or ""
    finishes = {c.choices[0].index: c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason}
    assert all(texts.values()) and set(finishes) == {0, 1}
    streamed_tokens = [t.token for c in chunks if c.choices[0].index == 0 and c.choices[0].logprobs
                       for t in c.choices[0].logprobs.content or []]  # fmt: skip
    assert "".join(streamed_tokens) == texts[0]


def test_logprobs_bytes_are_each_tokens_own_streamed_or_not(server: Served) -> None:
    settings = {"model": MODEL, "messages": [{"role": "user", "content": SPLIT_PROMPT}], "max_tokens": SPLIT_TOKENS,
                "temperature": 0, "logprobs": True, "top_logprobs": 3}  # fmt: skip
    reply = client(server).chat.completions.create(**settings)  # type: ignore[call-overload]
    (choice,) = reply.choices
    assert choice.logprobs is not None and choice.logprobs.content
    assert_exact_bytes(choice.message.content or "", choice.logprobs.content)

    # Streamed: each chunk carries the tokens behind its text (a partial character's token waits for the rest).
    chunks = [c for c in client(server).chat.completions.create(stream=True, **settings) if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    tokens = [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.content or []]
    assert text == choice.message.content
    assert_exact_bytes(text, tokens)
    scored = [c.choices[0] for c in chunks if c.choices[0].logprobs]
    assert len(scored) > 3 and chunks[-1].choices[0].finish_reason == "length"
    for piece in scored:
        assert (
            b"".join(bytes(t.bytes or []) for t in piece.logprobs.content or []) == (piece.delta.content or "").encode()
        )


def test_json_schema_response_format_is_enforced(server: Served) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    reply = client(server).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give me a number as JSON."}],
        max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "num", "schema": schema}},
    )
    assert isinstance(json.loads(reply.choices[0].message.content or "")["n"], int)


def test_sixteen_concurrent_clients_get_their_alone_answers(server: Served) -> None:
    """Each client gets its alone answer, or the same up to a near-tie of it (tests/greedy.py: sixteen
    sequences in a decode call take other kernels than one, and sum in another order)."""
    alone = []
    for prompt in PROMPTS:  # one at a time, with each token's two best choices
        reply = client(server).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=24, temperature=0,
            logprobs=True, top_logprobs=2,
        )  # fmt: skip
        tokens = reply.choices[0].logprobs.content if reply.choices[0].logprobs else None
        assert tokens and reply.choices[0].message.content
        alone.append((reply.choices[0].message.content, tokens))

    async def together() -> list[str]:
        sdk = openai.AsyncOpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=900)

        async def one(i: int) -> str:
            messages = [{"role": "user", "content": PROMPTS[i]}]
            if i % 2:  # half of them stream
                stream = await sdk.chat.completions.create(
                    model=MODEL, messages=messages, max_tokens=24, temperature=0, stream=True
                )
                return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            reply = await sdk.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0)
            return reply.choices[0].message.content or ""

        try:
            return list(await asyncio.gather(*(one(i) for i in range(len(PROMPTS)))))
        finally:
            await sdk.close()

    for got, (want, tokens) in zip(asyncio.run(together()), alone, strict=True):
        assert_same_or_near_tie(got, tokens, slack=LLAMACPP_SLACK, reference_text=want)
    assert metric(server, "infermux_in_flight_rows") == 0
    assert metric(server, "infermux_queue_depth") == 0


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b'{"model": "smollm2-135m-instruct", "messages": [', 400, None),
        (json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode(), 404, "model"),
        (
            json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}).encode(),
            400,
            "max_tokens",
        ),
        (
            json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "colour": 1}).encode(),
            400,
            "colour",
        ),
        (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 0}).encode(), 400, "n"),
        (json.dumps({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}).encode(), 400, None),
        (b"[1, 2]", 400, None),
    ],
)
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(
    server: Served, body: bytes, status: int, param: str | None
) -> None:
    request = urllib.request.Request(server.api + "/chat/completions", data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=60)
    assert caught.value.code == status
    error = json.loads(caught.value.read())["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert "Traceback" not in error["message"]
    if param is not None:
        assert error["param"] == param
    assert ask(server, "Say hi.")  # still serving


def test_sdk_raises_its_typed_errors(server: Served) -> None:
    sdk = client(server)
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], top_logprobs=3)


def test_ten_megabyte_body_is_refused(server: Served) -> None:
    big = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * (10 * 2**20)}]}).encode()
    request = urllib.request.Request(server.api + "/chat/completions", data=big, method="POST")
    request.add_header("Content-Type", "application/json")
    try:
        urllib.request.urlopen(request, timeout=120)
    except urllib.error.HTTPError as exc:
        assert exc.code == 413
        assert json.loads(exc.read())["error"]["code"] == "request_too_large"
    except (ConnectionError, urllib.error.URLError):
        pass  # the server may close the connection before the client has sent everything: also a refusal
    else:
        pytest.fail("a 10 MB body was accepted")
    assert server.alive() and ask(server, "Say hi.")


def test_client_disconnecting_mid_stream_cancels_its_generation(server: Served) -> None:
    before = metric(server, 'infermux_errors_total{status="499"}')
    body = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
            "max_tokens": 1500,
            "stream": True,
        }
    ).encode()
    parts = urlsplit(server.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=120) as sock:
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        sock.sendall(head + body)
        seen = b""
        while seen.count(b"data: ") < 3:  # a few tokens have been streamed
            data = sock.recv(65536)
            assert data, "server closed the stream early"
            seen += data
        assert b" 200 " in seen.split(b"\r\n", 1)[0]
    deadline = time.monotonic() + 120
    while metric(server, "infermux_in_flight_rows") != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metric(server, "infermux_in_flight_rows") == 0
    assert metric(server, 'infermux_errors_total{status="499"}') == before + 1
    assert server.alive() and ask(server, "Say hi.")


def test_metrics_are_prometheus_text(server: Served) -> None:
    ask(server, "Say hi.")
    with urllib.request.urlopen(server.url + "/metrics", timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    for name in (
        "infermux_requests_total",
        "infermux_errors_total",
        "infermux_prompt_tokens_total",
        "infermux_completion_tokens_total",
        "infermux_time_to_first_token_seconds_bucket",
        "infermux_request_latency_seconds_count",
        "infermux_queue_depth",
        "infermux_in_flight_rows",
    ):
        assert re.search(rf"^{name}(\{{[^}}]*\}})? \d", text, re.M), name
    assert metric(server, "infermux_completion_tokens_total") > 0


def test_the_engine_is_named_llamacpp_and_requests_without_sampling_get_the_chat_preset(server: Served) -> None:
    """serve, /health and /metrics call the engine LLAMACPP, as configs and `infermux engines` do; without a
    config, a request that chooses no sampling gets the chat's preset (greedy decoding loops on this model)."""
    with urllib.request.urlopen(server.url + "/health", timeout=30) as resp:
        health = json.loads(resp.read())
    assert health["engine"] == "LLAMACPP"
    assert health["sampling"] == {"temperature": 0.7, "top_p": 0.9, "frequency_penalty": 0.3, "presence_penalty": 0.0}
    log = server.log()
    assert f"serving {MODEL} on LLAMACPP at http://127.0.0.1:" in log and "InferenceEngine" not in log
    assert "no config given: requests that set no temperature, top_p or penalty get temperature=0.7" in log
    with urllib.request.urlopen(server.url + "/metrics", timeout=30) as resp:
        assert f'infermux_info{{model="{MODEL}",engine="LLAMACPP"}} 1' in resp.read().decode()


def test_forced_calls_with_defs_cut_calls_bad_tool_choice_and_sentinel_seeds(server: Served) -> None:
    from tests.engines.local.test_forced_schemas import ORDER
    from tests.engines.local.test_forced_schemas import TOOLS as DEF_TOOLS

    tools = [t.to_json_dict() for t in DEF_TOOLS[:1]]
    messages = [{"role": "user", "content": "Order two apples to Oslo."}]
    sdk = client(server)
    # Greedy: without a temperature the server samples (the chat preset), and a sampled call may run past
    # max_tokens depending on what the server answered before (a cut call is a length answer, no call).
    whole = sdk.chat.completions.create(
        model=MODEL, messages=messages, tools=tools, tool_choice="required", parallel_tool_calls=False,
        max_tokens=160, temperature=0.0,
    )  # type: ignore[arg-type]  # fmt: skip
    (call,) = whole.choices[0].message.tool_calls or []
    assert json.loads(call.function.arguments)["address"]  # type: ignore[union-attr]  # $defs resolved
    assert set(json.loads(call.function.arguments)) <= set(ORDER["properties"])  # type: ignore[union-attr,arg-type]
    for stream in (False, True):
        kw = {"model": MODEL, "messages": messages, "tools": tools, "tool_choice": "required", "max_tokens": 4}
        if stream:
            parts = list(sdk.chat.completions.create(stream=True, **kw))  # type: ignore[call-overload]
            text = "".join(p.choices[0].delta.content or "" for p in parts if p.choices)
            reasons = [p.choices[0].finish_reason for p in parts if p.choices and p.choices[0].finish_reason]
            calls = [d for p in parts if p.choices for d in p.choices[0].delta.tool_calls or []]
        else:
            cut = sdk.chat.completions.create(**kw)  # type: ignore[call-overload]
            text, reasons = cut.choices[0].message.content or "", [cut.choices[0].finish_reason]
            calls = cut.choices[0].message.tool_calls or []
        assert (text, reasons, calls) == ("", ["length"], []), stream  # no internal JSON as content
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(
            model=MODEL, messages=messages, tools=tools, tool_choice={"type": "function", "function": {"name": "nope"}}
        )  # type: ignore[arg-type]
    assert bad.value.param == "tool_choice"  # type: ignore[attr-defined]
    for seed in (-1, 4294967295):
        first, again = (
            sdk.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=1.0, seed=seed)
            .choices[0]
            .message.content
            for _ in "ab"
        )
        assert first == again and first
    with pytest.raises(openai.BadRequestError):
        ask(server, "Say a word.", seed=2**63)
