"""``infermux serve`` as a gateway (REMOTE) in front of a fake OpenAI API: retries, streaming, key hiding."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import cli_env
from tests.fakes._server import default_responder
from tests.fakes.openai_chat import FakeOpenAIChat
from tests.serve.running import Served, serve

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.slow

UPSTREAM_KEY = "sk-upstream-7f3a9c1e5b2d"
GATEWAY_KEY = "gw-key-51c0ffee9a7b"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAIChat]:
    with FakeOpenAIChat(api_key=UPSTREAM_KEY) as fake:
        assert isinstance(fake, FakeOpenAIChat)
        yield fake


@pytest.fixture(scope="module")
def gateway(upstream: FakeOpenAIChat, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    config = tmp_path_factory.mktemp("gw") / "gateway.yaml"
    config.write_text(
        "engine: REMOTE\n"
        "model:\n  model_name: gpt-fake\n"
        "generation:\n  max_new_tokens: 64\n"
        f"remote_params:\n  api_url: {upstream.url}/v1\n  api_key: {UPSTREAM_KEY}\n"
        "  max_retries: 3\n  retry_backoff_base: 0.05\n  retry_backoff_max: 0.2\n  num_workers: 8\n"
    )
    with serve("-c", str(config), env=cli_env(INFERMUX_API_KEY=GATEWAY_KEY), timeout=120) as served:
        yield served


@pytest.fixture
def fake(upstream: FakeOpenAIChat) -> Iterator[FakeOpenAIChat]:
    upstream.clear()
    upstream.api_key = UPSTREAM_KEY
    yield upstream
    upstream.clear()
    upstream.api_key = UPSTREAM_KEY
    upstream.stream_style = "standard"
    upstream.responder = default_responder


def sdk(gateway: Served, key: str = GATEWAY_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.api, api_key=key, max_retries=0, timeout=120)


def chat(gateway: Served, text: str, **kw: object) -> openai.types.chat.ChatCompletion:
    return sdk(gateway).chat.completions.create(model="gpt-fake", messages=[{"role": "user", "content": text}], **kw)


def assert_no_keys(text: str) -> None:
    assert UPSTREAM_KEY not in text
    assert GATEWAY_KEY not in text


def test_answers_through_the_upstream_with_the_upstream_key(gateway: Served, fake: FakeOpenAIChat) -> None:
    reply = chat(gateway, "hello there", max_tokens=20, temperature=0.5, seed=7, stop=["zzz"])
    assert reply.choices[0].message.content == "system=- | turns=1 | images=0 | last=hello there"
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    (sent,) = [r for r in fake.requests if r.path == "/v1/chat/completions"]
    assert sent.header("Authorization") == f"Bearer {UPSTREAM_KEY}"  # the client's key is not forwarded
    assert sent.json["max_tokens"] == 20 and sent.json["temperature"] == 0.5 and sent.json["seed"] == 7
    assert sent.json["stop"] == ["zzz"]
    assert_no_keys(reply.model_dump_json())


def test_streams_with_usage(gateway: Served, fake: FakeOpenAIChat) -> None:
    stream = sdk(gateway).chat.completions.create(
        model="gpt-fake",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "one two three"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "system=Be brief. | turns=1 | images=0 | last=one two three"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_retries_rate_limits_and_server_errors_honouring_retry_after(gateway: Served, fake: FakeOpenAIChat) -> None:
    fake.fail_next(429, "slow down", times=2, headers={"Retry-After": "0"})
    fake.fail_next(503, "overloaded")
    assert chat(gateway, "persist").choices[0].message.content.endswith("last=persist")  # type: ignore[union-attr]
    assert len(fake.requests) == 4


def test_a_rate_limit_storm_is_ridden_out_and_lasting_failures_are_502(gateway: Served, fake: FakeOpenAIChat) -> None:
    fake.fail_next(429, "slow down", times=6, headers={"Retry-After": "0"})  # 429s do not use up max_retries
    assert chat(gateway, "storm").choices[0].message.content
    assert len(fake.requests) == 7
    fake.clear()
    fake.fail_next(500, "broken", times=10)
    with pytest.raises(openai.InternalServerError) as caught:
        chat(gateway, "again")
    assert caught.value.status_code == 502 and len(fake.requests) == 4  # first try + max_retries
    fake.clear()
    assert chat(gateway, "after").choices[0].message.content  # still serving


def test_upstream_key_never_reaches_the_client_or_the_log(gateway: Served, fake: FakeOpenAIChat) -> None:
    fake.api_key = "sk-some-other-key-000"  # now the upstream rejects ours and echoes it back, as OpenAI does
    with pytest.raises(openai.APIStatusError) as caught:
        chat(gateway, "hi")
    assert caught.value.status_code == 502  # the gateway's own credentials failed, not the client's
    assert_no_keys(json.dumps(caught.value.body))
    assert_no_keys(str(caught.value))
    with pytest.raises(openai.APIStatusError) as streamed:
        list(
            sdk(gateway).chat.completions.create(
                model="gpt-fake", messages=[{"role": "user", "content": "x"}], stream=True
            )
        )
    assert_no_keys(json.dumps(streamed.value.body))
    fake.api_key = UPSTREAM_KEY
    assert chat(gateway, "ok").choices[0].message.content
    log = gateway.log()
    assert "upstream" in log.lower()  # the failure was logged...
    assert_no_keys(log)  # ...without either key


def test_gateway_key_is_required_on_the_api_but_not_for_health(gateway: Served, fake: FakeOpenAIChat) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(gateway, key="wrong-key-123").models.list()
    assert "wrong-key-123" not in str(caught.value.body)
    with urllib.request.urlopen(gateway.url + "/health", timeout=30) as resp:
        assert json.loads(resp.read())["status"] == "ok"
    with urllib.request.urlopen(gateway.url + "/", timeout=30) as resp:
        page = resp.read().decode()
    assert "<script" in page and "http" not in page.split("<body>", 1)[1]  # no CDN: everything is local
    assert not list(fake.requests)


def test_unsupported_parameter_is_refused_before_the_upstream(gateway: Served, fake: FakeOpenAIChat) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        chat(gateway, "x", extra_body={"min_p": 0.5, "top_k": 3})
    assert caught.value.body["param"] == "top_k"  # type: ignore[index]
    assert not fake.requests


def test_no_route_shows_a_key(gateway: Served) -> None:
    for path in ("/health", "/metrics", "/v1/models", "/"):
        request = urllib.request.Request(gateway.url + path, headers={"Authorization": f"Bearer {GATEWAY_KEY}"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert_no_keys(resp.read().decode() + str(resp.headers))
    assert Path(gateway.log_path).exists()
    assert_no_keys(gateway.log())


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_tool_calls_round_trip_through_the_gateway(gateway: Served, fake: FakeOpenAIChat) -> None:
    client = sdk(gateway)
    messages: list = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(
        model="gpt-fake", messages=messages, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments), dict)
    sent = [r for r in fake.requests if r.path == "/v1/chat/completions"][-1].json
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["tool_choice"] == "required" and sent["parallel_tool_calls"] is False

    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18 C"},
    ]
    second = client.chat.completions.create(model="gpt-fake", messages=messages, tools=[WEATHER])
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.content
    history = [r for r in fake.requests if r.path == "/v1/chat/completions"][-1].json["messages"]
    assert history[1]["tool_calls"][0]["id"] == call.id and history[2]["tool_call_id"] == call.id


def test_streamed_tool_calls_are_assembled_by_the_sdk(gateway: Served, fake: FakeOpenAIChat) -> None:
    stream = sdk(gateway).chat.completions.create(
        model="gpt-fake",
        messages=[{"role": "user", "content": "Weather in Rome?"}],
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
    )
    names, arguments, reasons = [], [], []
    for part in stream:
        for choice in part.choices:
            reasons.append(choice.finish_reason)
            for delta in choice.delta.tool_calls or []:
                if delta.function and delta.function.name:
                    names.append(delta.function.name)
                if delta.function and delta.function.arguments:
                    arguments.append(delta.function.arguments)
    assert names == ["get_weather"]
    assert isinstance(json.loads("".join(arguments)), dict)
    assert "tool_calls" in reasons


def test_a_tool_message_without_its_call_id_is_a_400(gateway: Served, fake: FakeOpenAIChat) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        sdk(gateway).chat.completions.create(
            model="gpt-fake", messages=[{"role": "user", "content": "x"}, {"role": "tool", "content": "18 C"}]
        )
    assert "tool_call_id" in str(err.value)
    assert not [r for r in fake.requests if r.path == "/v1/chat/completions"]


def test_n_choices_and_logprobs_through_the_gateway(gateway: Served, fake: FakeOpenAIChat) -> None:
    reply = chat(gateway, "pick one", n=3, seed=4, temperature=0.9, logprobs=True, top_logprobs=2)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    (sent,) = [r for r in fake.requests if r.path == "/v1/chat/completions"]
    assert (sent.json["n"], sent.json["logprobs"], sent.json["top_logprobs"], sent.json["seed"]) == (3, True, 2, 4)
    for choice in reply.choices:
        assert choice.message.content == "system=- | turns=1 | images=0 | last=pick one"
        assert choice.logprobs is not None and choice.logprobs.content
        assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
        assert all(len(t.top_logprobs) == 2 and t.bytes == list(t.token.encode()) for t in choice.logprobs.content)
    stream = sdk(gateway).chat.completions.create(
        model="gpt-fake", messages=[{"role": "user", "content": "pick"}], n=2, stream=True
    )
    chunks = [c for c in stream if c.choices]
    assert {c.choices[0].index for c in chunks} == {0, 1}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices[0].index == 1).endswith("last=pick")


def test_an_upstream_stream_cut_short_is_an_error_for_the_client(gateway: Served, fake: FakeOpenAIChat) -> None:
    fake.stream_style = "cut"  # the text, then the connection closes: no finish_reason, no [DONE]
    with pytest.raises(openai.InternalServerError) as caught:
        chat(gateway, "two plus two")
    assert caught.value.status_code == 502 and "ended before the answer did" in str(caught.value)
    reasons, text = [], []
    with pytest.raises(openai.APIError, match="ended before the answer did"):
        for part in sdk(gateway).chat.completions.create(
            model="gpt-fake", messages=[{"role": "user", "content": "two plus two"}], stream=True
        ):
            for choice in part.choices:
                reasons.append(choice.finish_reason)
                text.append(choice.delta.content or "")
    assert "last=two plus two" in "".join(text)  # what came was passed on...
    assert reasons and not any(reasons)  # ...but never called finished


def test_an_upstream_that_ignores_stream_true_still_answers(gateway: Served, fake: FakeOpenAIChat) -> None:
    fake.stream_style = "plain_json"
    parts = list(
        sdk(gateway).chat.completions.create(
            model="gpt-fake", messages=[{"role": "user", "content": "whole"}], stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in parts if c.choices).endswith("last=whole")
    assert parts[-1].choices and parts[-1].choices[0].finish_reason == "stop"


def test_a_1_2_mb_answer_in_one_event_passes_through(gateway: Served, fake: FakeOpenAIChat) -> None:
    big = "z" * 1_200_000
    fake.responder = lambda ex: big
    assert chat(gateway, "big").choices[0].message.content == big
    streamed = sdk(gateway).chat.completions.create(
        model="gpt-fake", messages=[{"role": "user", "content": "big"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == big


def test_parallel_calls_sharing_index_0_reach_the_client_as_separate_calls(
    gateway: Served, fake: FakeOpenAIChat
) -> None:
    fake.stream_style = "shared_index"
    tools = [WEATHER, {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
    reply = sdk(gateway).chat.completions.create(
        model="gpt-fake", messages=[{"role": "user", "content": "x"}], tools=tools, tool_choice="required"
    )
    calls = reply.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]  # type: ignore[union-attr]
    assert len({c.id for c in calls}) == 2


@pytest.mark.parametrize(
    "extra",
    [
        {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        {"tool_choice": "required"},
        {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
    ],
)
def test_a_tool_choice_that_does_not_fit_the_tools_is_a_400(
    gateway: Served, fake: FakeOpenAIChat, extra: dict[str, object]
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(gateway).chat.completions.create(
            model="gpt-fake",
            messages=[{"role": "user", "content": "x"}],
            **extra,  # type: ignore[call-overload]
        )
    assert caught.value.status_code == 400 and caught.value.param == "tool_choice"
    assert not [r for r in fake.requests if r.path == "/v1/chat/completions"]
