"""BEDROCK with botocore's Stubber: requests are checked by botocore's own parameter validation
against the bundled bedrock-runtime service model, and replies against its output shape."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("boto3")

from botocore.exceptions import ParamValidationError
from botocore.stub import ANY, Stubber

from infermux.configs import GenerationParams, ModelParams, RemoteParams
from infermux.engines.remote.bedrock.engine import BedrockInferenceEngine
from infermux.errors import ConfigError
from infermux.types import ContentItem, Conversation, Message, Role, Type
from tests.fakes import tiny_png

MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEFAKEFAKE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def make(workers: int = 1, model_kwargs: dict[str, Any] | None = None, **generation: Any) -> BedrockInferenceEngine:
    return BedrockInferenceEngine(
        ModelParams(model_name=MODEL, model_kwargs=model_kwargs or {}),
        generation_params=GenerationParams(**generation),
        remote_params=RemoteParams(num_workers=workers),
    )


@pytest.fixture
def engine() -> Iterator[BedrockInferenceEngine]:
    eng = make(max_new_tokens=64, temperature=0.2, top_p=0.9, stop_strings=["END"], model_kwargs={"top_k": 40})
    yield eng
    eng.close()


def reply(text: str, stop: str = "end_turn") -> dict[str, Any]:
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": stop,
        "usage": {"inputTokens": 12, "outputTokens": 3, "totalTokens": 15},
        "metrics": {"latencyMs": 42},
    }


def conv(*turns: tuple[Role, str | list[ContentItem]]) -> Conversation:
    return Conversation(messages=[Message(role=r, content=c) for r, c in turns])


def test_request_shape_is_valid_for_the_converse_api(engine: BedrockInferenceEngine) -> None:
    png = tiny_png()
    conversation = conv(
        (Role.SYSTEM, "Be brief."),
        (Role.USER, "Hello."),
        (Role.ASSISTANT, "Hi."),
        (
            Role.USER,
            [
                ContentItem(type=Type.TEXT, content="Compare these."),
                ContentItem(type=Type.IMAGE_BINARY, binary=png),
                ContentItem(type=Type.IMAGE_URL, content="s3://bucket/cat.jpeg"),
            ],
        ),
    )
    expected = {
        "modelId": MODEL,
        "system": [{"text": "Be brief."}],
        "messages": [
            {"role": "user", "content": [{"text": "Hello."}]},
            {"role": "assistant", "content": [{"text": "Hi."}]},
            {
                "role": "user",
                "content": [
                    {"text": "Compare these."},
                    {"image": {"format": "png", "source": {"bytes": png}}},
                    {"image": {"format": "jpeg", "source": {"s3Location": {"uri": "s3://bucket/cat.jpeg"}}}},
                ],
            },
        ],
        "inferenceConfig": {"maxTokens": 64, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]},
        "additionalModelRequestFields": {"top_k": 40},
    }
    with Stubber(engine.client) as stub:
        stub.add_response("converse", reply("Two images."), expected)
        [answer] = engine.infer([conversation])
        stub.assert_no_pending_responses()
    assert answer.last_message.text == "Two images."
    assert answer.metadata["usage"] == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    assert answer.metadata["finish_reason"] == "stop" and answer.metadata["latency_ms"] == 42


def test_one_client_serves_every_row_and_job(engine: BedrockInferenceEngine) -> None:
    client = engine.client
    with Stubber(client) as stub:
        for i in range(5):
            stub.add_response(
                "converse",
                reply(f"answer {i}", "max_tokens"),
                {"modelId": MODEL, "messages": ANY, "inferenceConfig": ANY, "additionalModelRequestFields": ANY},
            )
        first = engine.infer([conv((Role.USER, f"q{i}")) for i in range(3)])
        second = engine.infer([conv((Role.USER, f"q{i}")) for i in range(3, 5)])
        stub.assert_no_pending_responses()
    assert engine.client is client
    assert sorted(a.last_message.text for a in first + second) == [f"answer {i}" for i in range(5)]
    assert all(a.metadata["finish_reason"] == "length" for a in first)


def test_consecutive_turns_are_merged(engine: BedrockInferenceEngine) -> None:
    with Stubber(engine.client) as stub:
        stub.add_response(
            "converse",
            reply("ok"),
            {
                "modelId": MODEL,
                "messages": [{"role": "user", "content": [{"text": "a"}, {"text": "b"}]}],
                "inferenceConfig": ANY,
                "additionalModelRequestFields": ANY,
            },
        )
        [answer] = engine.infer([conv((Role.USER, "a"), (Role.USER, "b"))])
    assert answer.last_message.text == "ok"


def test_service_errors_become_row_errors(engine: BedrockInferenceEngine) -> None:
    rows = [conv((Role.USER, "bad")), conv((Role.USER, "denied")), conv((Role.USER, "slow")), conv((Role.USER, "good"))]
    with Stubber(engine.client) as stub:
        stub.add_client_error("converse", "ValidationException", "Malformed input request: max_tokens too big", 400)
        stub.add_client_error("converse", "AccessDeniedException", "You don't have access to the model", 403)
        stub.add_client_error("converse", "ThrottlingException", "Too many requests", 429)
        stub.add_response("converse", reply("fine"))
        answers = engine.infer(rows)
    bad, denied, slow, good = (a.metadata.get("error") for a in answers)
    assert bad["status"] == 400 and "Malformed input request" in bad["message"] and not bad["retryable"]
    assert denied["kind"] == "authentication" and "AWS credentials" in denied["message"]
    assert slow["retryable"] and slow["status"] == 429
    assert good is None and answers[3].last_message.text == "fine"


def test_botocore_validation_is_live_on_the_engines_client(engine: BedrockInferenceEngine) -> None:
    with Stubber(engine.client) as stub, pytest.raises(ParamValidationError, match="txt"):
        stub.add_response("converse", reply("never returned"))
        engine.client.converse(modelId=MODEL, messages=[{"role": "user", "content": [{"txt": "typo"}]}])


def test_http_image_urls_and_tool_results_without_a_call_fail_their_row(engine: BedrockInferenceEngine) -> None:
    rows = [
        conv((Role.USER, [ContentItem(type=Type.IMAGE_URL, content="https://x/y.png")])),
        conv((Role.USER, "q"), (Role.TOOL, "42")),
    ]
    with Stubber(engine.client) as stub:
        answers = engine.infer(rows)
        stub.assert_no_pending_responses()
    assert "s3://" in answers[0].metadata["error"]["message"]
    assert answers[1].metadata["error"]["kind"] == "invalid_input"
    assert "no earlier assistant turn called a tool" in answers[1].metadata["error"]["message"]


def test_region_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    with pytest.raises(ConfigError, match="AWS_REGION"):
        make()


def test_retries_and_pool_follow_remote_params() -> None:
    eng = make(workers=24)
    config = eng.client.meta.config
    assert config.retries["total_max_attempts"] == 4 and config.retries["mode"] == "adaptive"
    assert config.max_pool_connections == 24 and eng.max_concurrency() == 24
    assert eng.client.meta.region_name == "us-east-1"


def test_claude_models_that_refuse_sampling_get_none_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    model = "anthropic.claude-opus-4-7-20260101-v1:0"
    eng = BedrockInferenceEngine(
        ModelParams(model_name=model, model_kwargs={"top_k": 40}),
        generation_params=GenerationParams(max_new_tokens=16, temperature=0.5),
        remote_params=RemoteParams(num_workers=1),
    )
    expected = {
        "modelId": model,
        "messages": [{"role": "user", "content": [{"text": "hi"}]}],
        "inferenceConfig": {"maxTokens": 16},
    }
    with Stubber(eng.client) as stub:
        for _ in range(2):
            stub.add_response("converse", reply("ok"), expected)
        answers = eng.infer([conv((Role.USER, "hi")), conv((Role.USER, "hi"))])
        stub.assert_no_pending_responses()
    eng.close()
    assert [a.last_message.text for a in answers] == ["ok", "ok"]
    warnings = [r.getMessage() for r in caplog.records if "sampling" in r.getMessage()]
    assert len(warnings) == 1 and model in warnings[0] and "temperature, top_k" in warnings[0]


def test_a_service_quota_is_a_quota_error_with_advice_not_retried(engine: BedrockInferenceEngine) -> None:
    with Stubber(engine.client) as stub:
        stub.add_client_error(
            "converse", "ServiceQuotaExceededException", "Your request exceeds the service quota", 400
        )
        [answer] = engine.infer([conv((Role.USER, "q"))])
        stub.assert_no_pending_responses()
    error = answer.metadata["error"]
    assert error["kind"] == "quota_exceeded" and not error["retryable"] and "quota increase" in error["message"]


def test_prompt_tokens_include_prompt_cache_reads_and_writes() -> None:
    from infermux.engines.remote.bedrock.engine import parse_converse_response

    response = {
        "output": {"message": {"role": "assistant", "content": [{"text": "ok"}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 10, "outputTokens": 2, "totalTokens": 12, "cacheReadInputTokens": 30,
                  "cacheWriteInputTokens": 5},
    }  # fmt: skip
    conversation = Conversation(messages=[Message(role=Role.USER, content="hi")])
    metadata = parse_converse_response(response, conversation, GenerationParams()).metadata
    assert metadata["usage"] == {
        "prompt_tokens": 45, "completion_tokens": 2, "total_tokens": 47, "cached_tokens": 30, "cache_creation_tokens": 5
    }  # fmt: skip
