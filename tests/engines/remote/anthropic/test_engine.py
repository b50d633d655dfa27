"""ANTHROPIC: request shape and errors against the Anthropic fake; real generations via `vllm serve`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from infermux.configs import GenerationParams, InferenceConfig, ModelParams, RemoteParams
from infermux.configs.generation_params import GuidedDecodingParams
from infermux.engines.remote.anthropic.engine import AnthropicInferenceEngine, build_messages
from infermux.engines.remote.anthropic.models import refuses_sampling
from infermux.errors import AuthenticationError, ConfigError
from infermux.types import ContentItem, Conversation, Message, Role, Type
from tests.fakes import FakeAnthropic, tiny_png

KEY = "sk-ant-test"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=KEY) as server:
        yield server


@pytest.fixture(autouse=True)
def _clean(fake: FakeAnthropic) -> None:
    fake.clear()


def engine(url: str, key: str | None = KEY, **generation: object) -> AnthropicInferenceEngine:
    remote = RemoteParams(api_url=url, api_key=key, max_retries=2, retry_backoff_base=0.01, num_workers=4)
    return AnthropicInferenceEngine(
        ModelParams(model_name="claude-test"), generation_params=GenerationParams(**generation), remote_params=remote
    )


def conv(*turns: tuple[Role, str | list[ContentItem]]) -> Conversation:
    return Conversation(messages=[Message(role=r, content=c) for r, c in turns])


def test_system_multi_turn_image_and_stop_strings_reach_the_api(fake: FakeAnthropic) -> None:
    png = tiny_png()
    conversation = conv(
        (Role.SYSTEM, "You are terse."),
        (Role.USER, "Hello."),
        (Role.ASSISTANT, "Hi."),
        (Role.SYSTEM, "Answer in English."),
        (
            Role.USER,
            [ContentItem(type=Type.TEXT, content="What is this?"), ContentItem(type=Type.IMAGE_BINARY, binary=png)],
        ),
        (Role.USER, "Be brief."),
    )
    [answer] = engine(fake.url, max_new_tokens=64, stop_strings=["| last"]).infer([conversation])

    body = fake.requests[0].json
    assert fake.requests[0].path == "/v1/messages"
    assert fake.requests[0].header("x-api-key") == KEY
    assert fake.requests[0].header("anthropic-version") == "2023-06-01"
    assert body["system"] == "You are terse.\n\nAnswer in English."
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    last = body["messages"][2]["content"]  # the two consecutive user turns, merged
    assert [b["type"] for b in last] == ["text", "image", "text"]
    assert last[1]["source"]["type"] == "base64" and last[1]["source"]["media_type"] == "image/png"
    assert body["max_tokens"] == 64 and body["stop_sequences"] == ["| last"] and body["temperature"] == 0.0
    assert "top_p" not in body
    # The fake's reply echoes what it understood; the stop string cut it.
    assert answer.last_message.role == Role.ASSISTANT
    assert answer.last_message.text == "system=You are terse.\n\nAnswer in English. | turns=3 | images=1 "
    assert answer.metadata["stop_reason"] == "stop_sequence"
    assert answer.metadata["finish_reason"] == "stop"
    assert answer.metadata["usage"]["completion_tokens"] > 0


def test_image_urls_are_url_sources_and_top_p_alone_is_sent_without_temperature(fake: FakeAnthropic) -> None:
    conversation = conv(
        (
            Role.USER,
            [
                ContentItem(type=Type.IMAGE_URL, content="https://example.com/cat.png"),
                ContentItem(type=Type.TEXT, content="describe"),
            ],
        )
    )
    [answer] = engine(fake.url, top_p=0.5).infer([conversation])
    body = fake.requests[0].json
    assert body["messages"][0]["content"][0] == {
        "type": "image",
        "source": {"type": "url", "url": "https://example.com/cat.png"},
    }
    assert body["top_p"] == 0.5 and "temperature" not in body
    assert "images=1" in answer.last_message.text


def test_guided_json_becomes_output_config(fake: FakeAnthropic) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    gen = GenerationParams(guided_decoding=GuidedDecodingParams(json=schema))
    eng = AnthropicInferenceEngine(
        ModelParams(model_name="claude-test"),
        generation_params=gen,
        remote_params=RemoteParams(api_url=fake.url, api_key=KEY),
    )
    [answer] = eng.infer([conv((Role.USER, "Where?"))])
    closed = {**schema, "additionalProperties": False}
    assert fake.requests[0].json["output_config"] == {"format": {"type": "json_schema", "schema": closed}}
    assert json.loads(answer.last_message.text) == {"city": "text"}


def test_user_id_is_sent_as_metadata_user_id(fake: FakeAnthropic) -> None:
    fake.clear()
    eng = AnthropicInferenceEngine(
        ModelParams(model_name="claude-test"), remote_params=RemoteParams(api_url=fake.url, api_key=KEY, user_id="u-7")
    )
    [answer] = eng.infer([conv((Role.USER, "hi"))])
    assert "error" not in answer.metadata, answer.metadata
    assert fake.requests[0].json["metadata"] == {"user_id": "u-7"}


def test_wrong_key_fails_rows_with_a_message_naming_the_variable(fake: FakeAnthropic) -> None:
    [answer] = engine(fake.url, key="sk-ant-wrong").infer([conv((Role.USER, "hi"))])
    error = answer.metadata["error"]
    assert error["kind"] == "authentication" and error["status"] == 401
    assert "invalid x-api-key" in error["message"] and "ANTHROPIC_API_KEY" in error["message"]
    assert "sk-ant-wrong" not in error["message"]
    assert len(fake.requests) == 1  # not retried


def test_missing_key_for_anthropic_itself_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(AuthenticationError, match="ANTHROPIC_API_KEY"):
        AnthropicInferenceEngine(ModelParams(model_name="claude-test"))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-from-env")
    eng = AnthropicInferenceEngine(ModelParams(model_name="claude-test"))
    assert eng.url == "https://api.anthropic.com/v1/messages"
    assert "sk-from-env" not in repr(eng) and "sk-from-env" not in repr(eng.headers)


def test_bad_request_fails_only_that_row_with_the_providers_message(fake: FakeAnthropic, tmp_path: Path) -> None:
    rows = [conv((Role.USER, f"question {i}")) for i in range(3)]
    rows[1] = conv((Role.ASSISTANT, [ContentItem(type=Type.IMAGE_BINARY, binary=tiny_png())]))
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r.to_json_dict()) + "\n" for r in rows))
    eng = engine(fake.url, max_new_tokens=32)
    answers = eng.infer(inference_config=InferenceConfig(model=eng.model_params, input_path=str(inp)))
    assert [a.last_message.role for a in answers] == [Role.ASSISTANT, Role.ASSISTANT, Role.ASSISTANT]
    assert answers[0].last_message.text.endswith("last=question 0")
    assert answers[2].last_message.text.endswith("last=question 2")
    error = answers[1].metadata["error"]
    assert error["status"] == 400 and "image blocks are only allowed in user turns" in error["message"]
    assert eng.last_report is not None and eng.last_report.failed == 1


@pytest.mark.parametrize(("status", "headers"), [(429, {"retry-after": "0"}), (529, {}), (500, {})])
def test_rate_limits_and_overload_are_retried(fake: FakeAnthropic, status: int, headers: dict[str, str]) -> None:
    fake.fail_next(status, "try later", headers=headers)
    [answer] = engine(fake.url).infer([conv((Role.USER, "hi"))])
    assert "error" not in answer.metadata
    assert answer.last_message.text.endswith("last=hi")
    assert len(fake.requests) == 2


def test_overload_that_persists_fails_the_row_as_retryable(fake: FakeAnthropic) -> None:
    fake.fail_next(529, "Overloaded", times=10)
    [answer] = engine(fake.url).infer([conv((Role.USER, "hi"))])
    error = answer.metadata["error"]
    assert error["status"] == 529 and error["retryable"] and "Overloaded" in error["message"]
    assert len(fake.requests) == 3  # first attempt + max_retries=2


def test_temperature_above_one_is_rejected_up_front() -> None:
    with pytest.raises(ConfigError, match="between 0 and 1"):
        engine("http://127.0.0.1:9", temperature=1.5)


def test_a_tool_result_that_answers_no_call_is_an_invalid_row(fake: FakeAnthropic) -> None:
    [answer] = engine(fake.url).infer([conv((Role.USER, "hi"), (Role.TOOL, "42"))])
    assert answer.metadata["error"]["kind"] == "invalid_input"
    assert "no earlier assistant turn called a tool" in answer.metadata["error"]["message"]
    assert fake.requests == []


def test_build_messages_needs_a_turn() -> None:
    with pytest.raises(ValueError, match="no user or assistant message"):
        build_messages(conv((Role.SYSTEM, "only a system prompt")))


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://h:1", "http://h:1/v1/messages"),
        ("http://h:1/v1/", "http://h:1/v1/messages"),
        ("http://h:1/v1/messages", "http://h:1/v1/messages"),
    ],
)
def test_api_url_forms(given: str, expected: str) -> None:
    assert engine(given).url == expected


async def _collect(eng: AnthropicInferenceEngine, conversation: Conversation) -> tuple[list[str], Conversation]:
    deltas: list[str] = []
    final = None
    async for event in eng.astream(conversation):
        if event.final:
            final = event.conversation
        else:
            deltas.append(event.delta)
    assert final is not None
    return deltas, final


def test_streaming_yields_deltas_and_the_same_answer(fake: FakeAnthropic) -> None:
    import asyncio

    conversation = conv((Role.SYSTEM, "Be short."), (Role.USER, "stream please"))
    eng = engine(fake.url, max_new_tokens=64)
    [whole] = eng.infer([conversation])
    deltas, final = asyncio.run(_collect(eng, conversation))
    assert fake.requests[-1].json["stream"] is True
    assert len(deltas) > 3 and "".join(deltas) == whole.last_message.text == final.last_message.text
    assert final.metadata["finish_reason"] == "stop" and final.metadata["stop_reason"] == "end_turn"
    assert final.metadata["usage"]["completion_tokens"] == whole.metadata["usage"]["completion_tokens"]


@pytest.mark.parametrize(
    ("model", "refuses"),
    [
        ("claude-opus-4-7", True),
        ("claude-opus-4-7-20260101", True),
        ("claude-opus-4-10", True),
        ("claude-opus-5", True),
        ("claude-opus-5-1-20270101", True),
        ("claude-opus-4-6", False),
        ("claude-opus-4", False),
        ("claude-opus-4-1-20250805", False),
        ("claude-opus-4-20250514", False),
        ("claude-sonnet-5", True),
        ("claude-sonnet-5-0", True),
        ("claude-sonnet-5-20260301", True),
        ("claude-sonnet-4-5", False),
        ("claude-sonnet-4-5-20250929", False),
        ("claude-3-7-sonnet-20250219", False),
        ("claude-haiku-4-5", False),
        ("claude-fable-1", True),
        ("claude-mythos-2-1-20261001", True),
        ("anthropic.claude-opus-4-7-20260101-v1:0", True),
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", False),
        ("claude-opus-4-7@20260101", True),
        ("CLAUDE-OPUS-4-7", True),
        ("claude-opus-4-7-preview", False),
        ("my-claude-opus-4-7", False),
        ("gpt-4o", False),
    ],
)
def test_which_models_refuse_sampling(model: str, refuses: bool) -> None:
    assert refuses_sampling(model) is refuses


def test_models_that_refuse_sampling_get_none_and_one_warning(
    fake: FakeAnthropic, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [conv((Role.USER, f"q{i}")) for i in range(3)]
    for model in ("claude-opus-4-7", "claude-fable-1"):
        fake.clear()
        caplog.clear()
        quiet = AnthropicInferenceEngine(
            ModelParams(model_name=model), remote_params=RemoteParams(api_url=fake.url, api_key=KEY)
        )
        assert all("error" not in a.metadata for a in quiet.infer(rows))
        assert all(not {"temperature", "top_p", "top_k"} & set(r.json) for r in fake.requests)
        assert "sampling" not in caplog.text  # the defaults were not the user's choice: nothing to warn about
    fake.clear()
    eng = AnthropicInferenceEngine(
        ModelParams(model_name="claude-sonnet-5"),
        generation_params=GenerationParams(temperature=0.7, top_p=0.9),
        remote_params=RemoteParams(api_url=fake.url, api_key=KEY),
    )
    answers = eng.infer(rows)
    assert all("error" not in a.metadata for a in answers)
    assert all(not {"temperature", "top_p"} & set(r.json) for r in fake.requests)
    warnings = [r.getMessage() for r in caplog.records if "sampling" in r.getMessage()]
    assert len(warnings) == 1 and "claude-sonnet-5" in warnings[0] and "temperature, top_p" in warnings[0]
    fake.clear()
    older = AnthropicInferenceEngine(
        ModelParams(model_name="claude-opus-4-6"), remote_params=RemoteParams(api_url=fake.url, api_key=KEY)
    )
    older.infer(rows[:1])
    assert fake.requests[0].json["temperature"] == 0.0


def test_prompt_caching_marks_the_system_prompt_and_reports_cached_tokens(fake: FakeAnthropic) -> None:
    from infermux.jobs.cost import Pricing

    remote = RemoteParams(api_url=fake.url, api_key=KEY, anthropic_prompt_caching=True, num_workers=1)
    eng = AnthropicInferenceEngine(ModelParams(model_name="claude-3-5-haiku-latest"), remote_params=remote)
    system = "You answer questions about a long shared document. " * 20
    rows = [conv((Role.SYSTEM, system), (Role.USER, f"Question {i}?")) for i in range(3)]
    answers = eng.infer(rows)
    body = fake.requests[0].json
    assert body["system"] == [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
    system_tokens = len(system.split())
    first, second, _ = (a.metadata["usage"] for a in answers)
    assert first["cache_creation_tokens"] == system_tokens and first["cached_tokens"] == 0
    assert second["cached_tokens"] == system_tokens and second["cache_creation_tokens"] == 0
    assert second["prompt_tokens"] == system_tokens + 2  # prompt tokens include the cached ones
    # cache reads are priced below fresh input by the price library
    pricing = Pricing("anthropic", "claude-3-5-haiku-latest")
    uncached = {**second, "cached_tokens": 0}
    assert (pricing.cost(second) or 0) < (pricing.cost(uncached) or 0)
    # by default (automatic caching, a top-level cache_control) the system prompt stays a plain string
    fake.clear()
    engine(fake.url).infer([rows[0]])
    assert fake.requests[0].json["system"] == system
