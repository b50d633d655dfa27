"""Hosted providers: requests captured by a local server and checked against each provider's published
chat-completions format (URL path, bearer auth, body fields), plus provider quirks."""

from __future__ import annotations

import json
import logging
import urllib.request
from typing import Any

import pytest

from infermux.configs import GenerationParams, ModelParams, RemoteParams
from infermux.configs.generation_params import GuidedDecodingParams
from infermux.engines.registry import engine_class
from infermux.engines.remote.openai.engine import RemoteInferenceEngine
from infermux.errors import AuthenticationError, UnsupportedParamError
from infermux.types import Conversation
from tests.fakes._openai_chat import OPENAI_CHAT_PARAMS, validate_chat_body
from tests.servers import stub_server

KEY = "sk-provider-test-key-123456"

# engine → (published base URL, key variable, body fields beyond OpenAI's that the provider documents)
PUBLISHED = {
    "OPENAI": ("https://api.openai.com/v1", "OPENAI_API_KEY", set()),
    "TOGETHER": ("https://api.together.xyz/v1", "TOGETHER_API_KEY", {"min_p"}),
    "LAMBDA": ("https://api.lambda.ai/v1", "LAMBDA_API_KEY", set()),
    "DEEPSEEK": ("https://api.deepseek.com/v1", "DEEPSEEK_API_KEY", set()),
    "SAMBANOVA": ("https://api.sambanova.ai/v1", "SAMBANOVA_API_KEY", set()),
    "PARASAIL": ("https://api.parasail.io/v1", "PARASAIL_API_KEY", set()),
    "FIREWORKS": ("https://api.fireworks.ai/inference/v1", "FIREWORKS_API_KEY", {"min_p"}),
    "OPENROUTER": ("https://openrouter.ai/api/v1", "OPENROUTER_API_KEY", {"min_p"}),
    "CEREBRAS": ("https://api.cerebras.ai/v1", "CEREBRAS_API_KEY", set()),
    "HUGGING_FACE_ROUTER": ("https://router.huggingface.co/v1", "HF_TOKEN", set()),
    "REMOTE": (None, None, {"min_p", "stop_token_ids"}),
    "REMOTE_VLLM": (None, None, {"min_p", "stop_token_ids", "structured_outputs", "chat_template_kwargs"}),
}


@pytest.fixture(scope="module")
def capture() -> Any:
    with stub_server("--capture") as url:
        yield url


def _captured(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(url + "/_stub/requests") as resp:
        data: list[dict[str, Any]] = json.loads(resp.read())
    urllib.request.urlopen(urllib.request.Request(url + "/_stub/reset", method="POST")).close()
    return data


def _conv() -> Conversation:
    return Conversation.model_validate(
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}
    )


def _run(name: str, url: str, model: str = "some-model", **generation: Any) -> dict[str, Any]:
    cls = engine_class(name)
    engine = cls(
        ModelParams(model_name=model),
        generation_params=GenerationParams(max_new_tokens=16, **generation),
        remote_params=RemoteParams(api_url=url + "/v1", api_key=KEY),
    )
    (answered,) = engine.infer([_conv()])
    assert "error" not in answered.metadata, answered.metadata
    (request,) = _captured(url)
    return request


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_request_matches_the_published_format(name: str, capture: str) -> None:
    base, env, extra = PUBLISHED[name]
    cls = engine_class(name)
    assert cls.default_api_url == base and cls.api_key_env == env
    request = _run(name, capture, temperature=0.3, top_p=0.9, stop_strings=["END"])
    assert request["method"] == "POST" and request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    assert request["headers"]["Content-Type"].startswith("application/json")
    body = json.loads(request["body"])
    exchange = validate_chat_body(body, allowed=OPENAI_CHAT_PARAMS | extra)
    assert exchange.system == "Be brief." and exchange.turns == [("user", "Hi")]
    assert body["model"] == "some-model" and body["temperature"] == 0.3 and body["stop"] == ["END"]
    max_field = "max_completion_tokens" if name == "OPENAI" else "max_tokens"
    assert body[max_field] == 16


@pytest.mark.parametrize("name", [n for n, (_, env, _) in PUBLISHED.items() if env])
def test_a_missing_key_names_the_variable(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = PUBLISHED[name][1]
    assert env is not None
    monkeypatch.delenv(env, raising=False)
    with pytest.raises(AuthenticationError, match=env):
        engine_class(name)(ModelParams(model_name="m"))
    monkeypatch.setenv(env, "from-env")
    assert engine_class(name)(ModelParams(model_name="m")).headers["Authorization"] == "Bearer from-env"


def test_every_provider_row_is_an_engine_checked_here() -> None:
    """A new row in the providers table needs its published URL and key here (and is then tested above)."""
    import infermux.inference
    from infermux.engines.remote.openai.providers import PROVIDERS

    assert {engine.value for engine in PROVIDERS} <= set(PUBLISHED)
    for engine, row in PROVIDERS.items():
        cls = getattr(infermux.inference, row.class_name)
        assert cls is engine_class(engine.value) and issubclass(cls, RemoteInferenceEngine)
        assert cls.engine_type == engine and cls.provider == row.label and cls.__name__ == row.class_name
        assert cls.capabilities.streaming and (cls.__doc__ or "").startswith(row.summary.split(" (")[0])


def test_min_p_goes_out_where_the_provider_documents_it(capture: str) -> None:
    for name in ("FIREWORKS", "OPENROUTER"):
        assert json.loads(_run(name, capture, min_p=0.05)["body"])["min_p"] == 0.05


def test_hugging_face_router_passes_the_provider_suffix_through(capture: str) -> None:
    request = _run("HUGGING_FACE_ROUTER", capture, model="meta-llama/Llama-3.1-8B-Instruct:fastest")
    assert json.loads(request["body"])["model"] == "meta-llama/Llama-3.1-8B-Instruct:fastest"


def test_num_workers_defaults_per_provider_unless_set() -> None:
    openai = engine_class("OPENAI")
    engine = openai(ModelParams(model_name="m"), remote_params=RemoteParams(api_key=KEY))
    assert engine.max_concurrency() == openai.default_num_workers
    engine = openai(ModelParams(model_name="m"), remote_params=RemoteParams(api_key=KEY, num_workers=3))
    assert engine.max_concurrency() == 3


# ---------------------------------------------------------------------- OpenAI reasoning models


def test_reasoning_model_drops_rejected_params_and_uses_developer_role(
    capture: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="infermux.remote"):
        request = _run(
            "OPENAI", capture, model="o3-mini", temperature=0.7, logit_bias={"50256": -100}, stop_strings=["x"]
        )
    body = json.loads(request["body"])
    validate_chat_body(body)
    for rejected in ("temperature", "top_p", "logit_bias", "stop", "max_tokens"):
        assert rejected not in body
    assert body["max_completion_tokens"] == 16
    assert [m["role"] for m in body["messages"]] == ["developer", "user"]
    assert "temperature=0.7" in caplog.text and "logit_bias" in caplog.text
    assert "max_new_tokens=16 may leave no room" in caplog.text


def test_o1_mini_takes_no_system_message(capture: str) -> None:
    body = json.loads(_run("OPENAI", capture, model="o1-mini")["body"])
    assert body["messages"] == [{"role": "user", "content": "Be brief.\n\nHi"}]


def test_chat_models_keep_temperature_and_system_role(capture: str) -> None:
    body = json.loads(_run("OPENAI", capture, model="gpt-4o-mini", temperature=0.2)["body"])
    assert body["temperature"] == 0.2 and body["messages"][0]["role"] == "system"


# ---------------------------------------------------------------------- other quirks


def test_remote_vllm_structured_outputs_and_adapter_name(capture: str) -> None:
    cls = engine_class("REMOTE_VLLM")
    engine = cls(
        ModelParams(model_name="base-model", adapter_model="my-lora"),
        generation_params=GenerationParams(guided_decoding=GuidedDecodingParams(regex=r"\d+"), min_p=0.05),
        remote_params=RemoteParams(api_url=capture),
    )
    engine.infer([_conv()])
    body = json.loads(_captured(capture)[0]["body"])
    assert body["model"] == "my-lora" and body["structured_outputs"] == {"regex": r"\d+"} and body["min_p"] == 0.05
    engine = cls(
        ModelParams(model_name="base-model", chat_template_kwargs={"enable_thinking": False}),
        generation_params=GenerationParams(guided_decoding=GuidedDecodingParams(choice=["yes", "no"])),
        remote_params=RemoteParams(api_url=capture),
    )
    engine.infer([_conv()])
    body = json.loads(_captured(capture)[0]["body"])
    assert body["model"] == "base-model" and body["structured_outputs"] == {"choice": ["yes", "no"]}
    assert body["chat_template_kwargs"] == {"enable_thinking": False}


def test_regex_guidance_is_rejected_where_unsupported_in_strict_mode() -> None:
    guided = GenerationParams(guided_decoding=GuidedDecodingParams(regex="a+"))
    with pytest.raises(UnsupportedParamError, match="regex"):
        RemoteInferenceEngine(
            ModelParams(model_name="m"),
            generation_params=guided,
            remote_params=RemoteParams(api_url="http://x"),
            strict=True,
        )
    json_guided = GenerationParams(guided_decoding=GuidedDecodingParams(json={"type": "object"}))
    with pytest.raises(UnsupportedParamError, match="json"):
        engine_class("DEEPSEEK")(
            ModelParams(model_name="deepseek-chat"), generation_params=json_guided,
            remote_params=RemoteParams(api_key=KEY), strict=True,
        )  # fmt: skip


def test_deepseek_reasoning_content_is_kept() -> None:
    with stub_server("--reasoning") as url:
        engine = engine_class("DEEPSEEK")(
            ModelParams(model_name="deepseek-reasoner"), remote_params=RemoteParams(api_url=url, api_key=KEY)
        )
        (answered,) = engine.infer([_conv()])
    assert answered.messages[-1].reasoning_content == "thinking about: Hi"  # on the answer, not in metadata
    assert "reasoning_content" not in answered.metadata
    assert answered.messages[-1].content == "echo: Hi"
