"""Declared capabilities: what the CLI reads instead of duck typing, and provider limits checked
before anything is sent."""

from __future__ import annotations

import pytest

from infermux.configs import GenerationParams, ModelParams, RemoteParams
from infermux.engines.capabilities import Capabilities, check_limits
from infermux.engines.registry import engine_class, is_available
from infermux.errors import ConfigError

CAPS = Capabilities(max_items={"stop_strings": 4}, value_ranges={"temperature": (0, 2), "logit_bias": (-100, 100)})


def test_limits_name_the_parameter_the_value_and_the_bound() -> None:
    assert check_limits("X", CAPS, GenerationParams(stop_strings=list("abcd"), logit_bias={"5": 100})) == []
    (stops,) = check_limits("X", CAPS, GenerationParams(stop_strings=list("abcde")))
    assert stops == "generation.stop_strings has 5 entries; X accepts at most 4"
    # The config refuses such a bias itself (Oumi's rule); one built without validation still meets the engine's.
    (bias,) = check_limits("X", CAPS, GenerationParams.model_construct(logit_bias={"50256": -101.0, "7": 3.0}))
    assert bias == "generation.logit_bias['50256']=-101.0: X accepts values between -100 and 100"
    (temp,) = check_limits("X", CAPS, GenerationParams(temperature=2.5))
    assert "temperature=2.5" in temp and "between 0 and 2" in temp


# Engine, a generation that breaks one of its documented limits, and the words the error must contain.
CASES = [
    ("OPENAI", {"stop_strings": list("abcde")}, "at most 4"),
    ("OPENAI", {"logit_bias": {"1": 150}}, "between -100 and 100"),
    ("OPENAI", {"temperature": 2.5}, "between 0 and 2"),
    ("OPENAI", {"n": 129}, "between 1 and 128"),
    ("GOOGLE_GEMINI", {"stop_strings": list("abcdef")}, "at most 5"),
    ("GOOGLE_GEMINI", {"n": 9}, "between 1 and 8"),
    ("GOOGLE_VERTEX", {"stop_strings": list("abcdef")}, "at most 5"),
    ("ANTHROPIC", {"temperature": 1.5}, "between 0 and 1"),
    ("BEDROCK", {"temperature": 1.5}, "between 0 and 1"),
]


@pytest.mark.parametrize(("name", "generation", "words"), CASES)
def test_each_provider_refuses_its_limits_at_construction(
    name: str, generation: dict[str, object], words: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not is_available(name):
        pytest.skip(f"{name} is not installed")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    kwargs: dict[str, object] = (
        {"credentials": object(), "project_id": "p", "region": "r"} if name == "GOOGLE_VERTEX" else {}
    )
    with pytest.raises(ConfigError, match=words):
        engine_class(name)(  # type: ignore[call-arg]
            ModelParams(model_name="m"),
            generation_params=GenerationParams.model_construct(**generation),  # validated by the engine alone
            remote_params=RemoteParams(api_url="http://127.0.0.1:9/v1", api_key="k"),
            **kwargs,
        )


def test_the_config_refuses_a_logit_bias_outside_100_like_oumi() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"logit_bias values must be between -100 and 100 \(got '50256': -150\)"):
        GenerationParams(logit_bias={50256: -150})
    assert GenerationParams(logit_bias={50256: -100, "7": 100}).logit_bias == {"50256": -100, "7": 100}


def test_parameters_a_model_is_never_sent_are_not_limited() -> None:
    # OpenAI reasoning models get no stop strings; Claude models that refuse sampling get no temperature.
    params = RemoteParams(api_url="http://127.0.0.1:9/v1", api_key="k")
    engine_class("OPENAI")(
        ModelParams(model_name="o3-mini"),
        generation_params=GenerationParams(stop_strings=list("abcde")),
        remote_params=params,
    )  # type: ignore[call-arg]
    engine_class("ANTHROPIC")(
        ModelParams(model_name="claude-opus-4-7"),
        generation_params=GenerationParams(temperature=1.5),
        remote_params=params,
    )  # type: ignore[call-arg]


def test_batch_api_is_a_declared_capability() -> None:
    # ANTHROPIC: Message Batches (issue 15); FIREWORKS, GOOGLE_GEMINI: issue 27
    offered = {
        "FIREWORKS",
        "GOOGLE_GEMINI",
        "OPENAI",
        "REMOTE",
        "REMOTE_VLLM",
        "TOGETHER",
        "DEEPSEEK",
        "SAMBANOVA",
        "PARASAIL",
        "LAMBDA",
        "ANTHROPIC",
        "GOOGLE_VERTEX",
        "BEDROCK",
    }
    for name in offered:
        assert engine_class(name).capabilities.batch_api, name
    for name in ("CEREBRAS", "OPENROUTER", "SGLANG"):
        assert not engine_class(name).capabilities.batch_api, name
