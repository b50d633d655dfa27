"""Per-model facts of Claude models, kept as data for ANTHROPIC and BEDROCK (issue 23, items 6 and 16).

* Models that refuse sampling parameters (Opus >= 4.7, Sonnet >= 5, claude-fable / claude-mythos whatever
  follows the family name) are sent none; ``model_kwargs.accepts_sampling`` overrides the table for a model
  newer than it.
* Extended thinking's limits are known before sending: ``config check``, ``infer`` and the engine refuse a
  budget that is not below ``max_new_tokens`` (or under 1024), forced tool use, ``top_p`` under 0.95.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infermux.configs import GenerationParams, ModelParams, RemoteParams
from infermux.engines.remote.anthropic import AnthropicInferenceEngine
from infermux.engines.remote.anthropic.models import SAMPLING_REFUSED, refuses_sampling, sends_sampling
from infermux.errors import ConfigError
from infermux.types import Conversation, Message, Role
from tests.conftest import cli_env, run_cli
from tests.fakes import FakeAnthropic

KEY = "sk-ant-test"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=KEY) as server:
        yield server


def conv(text: str = "hi") -> Conversation:
    return Conversation(messages=[Message(role=Role.USER, content=text)])


def anthropic(url: str, model: str, model_kwargs: dict[str, Any] | None = None, **generation: Any):
    return AnthropicInferenceEngine(
        ModelParams(model_name=model, model_kwargs=model_kwargs or {}),
        generation_params=GenerationParams(**generation),
        remote_params=RemoteParams(api_url=url, api_key=KEY, max_retries=0),
    )


@pytest.mark.parametrize(
    ("model", "refuses"),
    [
        ("claude-mythos-preview", True),
        ("anthropic.claude-mythos-preview-v1:0", True),
        ("claude-mythos", True),
        ("claude-fable-preview-20261001", True),
        ("claude-opus-4-8", True),
        ("claude-opus-5", True),
        ("claude-opus-5-1-20270101", True),
        ("global.anthropic.claude-sonnet-5-20260301-v1:0", True),
        ("claude-opus-4-6", False),
        ("claude-haiku-5", False),  # Haiku takes sampling parameters (Oumi's table too)
        ("claude-mythology-1", False),
    ],
)
def test_the_table_covers_family_patterns(model: str, refuses: bool) -> None:
    assert refuses_sampling(model) is refuses


def test_the_table_is_data() -> None:
    assert SAMPLING_REFUSED["opus"] == (4, 7) and SAMPLING_REFUSED["sonnet"] == (5, 0)
    assert SAMPLING_REFUSED["mythos"] is None and SAMPLING_REFUSED["fable"] is None


def test_a_user_override_for_a_model_newer_than_the_table(fake: FakeAnthropic) -> None:
    assert sends_sampling("claude-opus-4-6", {"accepts_sampling": False}) is False
    assert sends_sampling("claude-opus-4-7", {"accepts_sampling": True}) is True
    fake.clear()
    newer = anthropic(fake.url, "claude-opus-4-6", {"accepts_sampling": False}, temperature=0.5)
    [answer] = newer.infer([conv()])
    assert "error" not in answer.metadata
    body = fake.requests[-1].json
    assert "temperature" not in body and "accepts_sampling" not in body


def test_mythos_preview_is_sent_no_sampling_parameters(fake: FakeAnthropic) -> None:
    fake.clear()
    [answer] = anthropic(fake.url, "claude-mythos-preview", temperature=0.3).infer([conv()])
    assert "error" not in answer.metadata, answer.metadata
    assert not {"temperature", "top_p", "top_k"} & set(fake.requests[-1].json)


THINKING = {"type": "enabled", "budget_tokens": 2048}


@pytest.mark.parametrize(
    ("thinking", "generation", "words"),
    [
        (THINKING, {"max_new_tokens": 2048}, "budget_tokens=2048 must be below generation.max_new_tokens=2048"),
        (THINKING, {"max_new_tokens": 1000}, "raise max_new_tokens above 2048"),
        ({"type": "enabled", "budget_tokens": 500}, {"max_new_tokens": 4096}, "smallest thinking budget is 1024"),
        (THINKING, {"max_new_tokens": 4096, "tool_choice": "required"}, "extended thinking does not allow"),
        (THINKING, {"max_new_tokens": 4096, "top_p": 0.5}, "top_p must be between 0.95 and 1"),
    ],
)
def test_thinking_limits_are_refused_before_sending(
    fake: FakeAnthropic, thinking: dict[str, Any], generation: dict[str, Any], words: str
) -> None:
    fake.clear()
    with pytest.raises(ConfigError, match=words):
        anthropic(fake.url, "claude-sonnet-4-5", {"thinking": thinking}, **generation)
    assert fake.requests == []


def test_consistent_thinking_is_sent_and_answered(fake: FakeAnthropic) -> None:
    fake.clear()
    eng = anthropic(fake.url, "claude-sonnet-4-5", {"thinking": THINKING}, max_new_tokens=4096, temperature=0.5)
    [answer] = eng.infer([conv()])
    assert "error" not in answer.metadata, answer.metadata
    body = fake.requests[-1].json
    assert body["thinking"] == THINKING and "temperature" not in body
    assert answer.last_message.reasoning_content


def test_bedrock_shares_the_thinking_limits_and_sends_no_temperature(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("boto3")
    from botocore.stub import Stubber

    from infermux.engines.remote.bedrock import BedrockInferenceEngine

    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    model = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
    with pytest.raises(ConfigError, match=r"must be below generation\.max_new_tokens=1024"):
        BedrockInferenceEngine(
            ModelParams(model_name=model, model_kwargs={"thinking": THINKING}),
            generation_params=GenerationParams(max_new_tokens=1024),
        )
    eng = BedrockInferenceEngine(
        ModelParams(model_name=model, model_kwargs={"thinking": THINKING, "accepts_sampling": True}),
        generation_params=GenerationParams(max_new_tokens=4096, temperature=0.3),
        remote_params=RemoteParams(num_workers=1),
    )
    expected = {
        "modelId": model,
        "messages": [{"role": "user", "content": [{"text": "hi"}]}],
        "inferenceConfig": {"maxTokens": 4096},
        "additionalModelRequestFields": {"thinking": THINKING},
    }
    reply = {"output": {"message": {"role": "assistant", "content": [{"text": "ok"}]}}, "stopReason": "end_turn",
             "usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2}, "metrics": {"latencyMs": 1}}  # fmt: skip
    with Stubber(eng.client) as stub:
        stub.add_response("converse", reply, expected)
        [answer] = eng.infer([conv()])
        stub.assert_no_pending_responses()
    eng.close()
    assert answer.last_message.text == "ok"


def test_config_check_and_infer_refuse_a_thinking_budget_not_below_max_tokens(tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}]}) + "\n")
    with FakeAnthropic(api_key=KEY) as server:
        config = tmp_path / "anthropic.yaml"
        config.write_text(
            "model:\n  model_name: claude-sonnet-4-5\n  model_kwargs:\n    thinking: {type: enabled, budget_tokens: 2048}\n"
            f"engine: ANTHROPIC\nremote_params:\n  api_url: {server.url}\ngeneration:\n  max_new_tokens: 1024\n"
        )
        env = cli_env(ANTHROPIC_API_KEY=KEY)
        check = run_cli("config", "check", "-c", str(config), env=env)
        assert check.returncode == 2 and "budget_tokens=2048 must be below" in check.stderr, check.stderr
        assert "every requested parameter is supported" not in check.stdout
        proc = run_cli("infer", "-c", str(config), "--input_path", str(inp), "--output_path", str(tmp_path / "o.jsonl"),
                       env=env)  # fmt: skip
        assert proc.returncode == 2 and "budget_tokens=2048" in proc.stderr and "Traceback" not in proc.stderr
        assert server.requests == []
