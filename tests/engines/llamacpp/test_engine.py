"""LLAMACPP on the real library and the embedded SmolLM2-135M GGUF (loaded once per session)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

from infermux.configs import GenerationParams, ModelParams
from infermux.configs.generation_params import GuidedDecodingParams
from infermux.engines.llamacpp.engine import LlamaCppInferenceEngine
from infermux.engines.llamacpp.grammar import choice_to_gbnf, regex_to_gbnf
from infermux.engines.llamacpp.loading import resolve_gguf
from infermux.errors import ConfigError, ModelNotFoundError, RowError, UnsupportedParamError
from infermux.models import gguf_path
from infermux.types import Conversation
from tests.greedy import LLAMACPP_SLACK, assert_same_or_near_tie, llama_cpp_logprobs

pytestmark = pytest.mark.slow

N_CTX = 512
QUESTIONS = [
    "What is the capital of France?",
    "Write a sentence about the number 7.",
    "Name three primary colors.",
    "Write a haiku about the sea.",
    "Why is the sky blue?",
    "Give me a short tip for learning to cook.",
]


def conv(text: str, system: str | None = None) -> Conversation:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return Conversation.model_validate({"messages": messages})


@pytest.fixture(scope="session")
def engine():
    eng = LlamaCppInferenceEngine(
        ModelParams(model_name="smollm2-135m-instruct", model_kwargs={"n_ctx": N_CTX, "n_seq_max": 4}),
        generation_params=GenerationParams(max_new_tokens=32),
    )
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def raw():
    from llama_cpp import Llama

    from infermux.engines.llamacpp.cpu import model_defaults
    from infermux.engines.llamacpp.settings import llama_kwargs

    with model_defaults():  # as the engine loads it (AMX guard, llama_kwargs)
        llm = Llama(model_path=str(gguf_path()), **llama_kwargs({"n_ctx": N_CTX}))
    yield llm
    llm.close()


def answers(eng: LlamaCppInferenceEngine, texts: list[str], **gen) -> list[Conversation]:
    return eng.infer([conv(t) for t in texts], _config(eng, **gen))


def _config(eng: LlamaCppInferenceEngine, **gen):
    from infermux.configs import InferenceConfig

    return InferenceConfig(model=eng.model_params, generation=GenerationParams(**{"max_new_tokens": 32, **gen}))


# ---------------------------------------------------------------------------- equality with the library
@pytest.fixture(scope="module")
def raw_scored():
    """The library as ``raw`` loads it, with every position's logits kept (it reports logprobs only so)."""
    from llama_cpp import Llama

    from infermux.engines.llamacpp.cpu import model_defaults
    from infermux.engines.llamacpp.settings import llama_kwargs

    with model_defaults():
        llm = Llama(model_path=str(gguf_path()), **llama_kwargs({"n_ctx": N_CTX, "logits_all": True}))
    yield llm
    llm.close()


def test_greedy_batch_equals_raw_create_chat_completion(engine, raw_scored):
    """Six conversations through 4 slots (continuous batching) answer as the library does one by one: the
    same answer, or the same up to a near-tie of the library's answer (tests/greedy.py: four sequences in a
    decode call take other kernels than one, and sum in another order)."""
    out = answers(engine, QUESTIONS)
    for question, got in zip(QUESTIONS, out, strict=True):
        ref = raw_scored.create_chat_completion(
            [{"role": "user", "content": question}], temperature=0.0, max_tokens=32, top_k=0, min_p=0.0, top_p=1.0,
            logprobs=True, top_logprobs=2,
        )  # fmt: skip
        want = ref["choices"][0]["message"]["content"]
        tokens = llama_cpp_logprobs(ref)
        assert_same_or_near_tie(got.last_message.text, tokens, slack=LLAMACPP_SLACK, reference_text=want)
        assert got.metadata["usage"]["prompt_tokens"] == ref["usage"]["prompt_tokens"]
        if got.last_message.text == want:  # after a near-tie flip the answers are unrelated
            assert got.metadata["usage"]["completion_tokens"] == ref["usage"]["completion_tokens"]
            assert got.metadata["finish_reason"] == ref["choices"][0]["finish_reason"]


def test_system_prompt_goes_through_the_models_template(engine, raw):
    c = conv("Why is the sky blue?", system="You answer in one short sentence.")
    tokens = engine.prompt_tokens(c)
    text = raw.detokenize(tokens, special=True).decode()
    assert text.startswith("<|im_start|>system\nYou answer in one short sentence.<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")


# ---------------------------------------------------------------------------- each parameter, observably
def test_max_new_tokens_caps_the_answer(engine):
    (got,) = answers(engine, ["Write a long story about a dragon."], max_new_tokens=5)
    assert got.metadata["usage"]["completion_tokens"] == 5
    assert got.metadata["finish_reason"] == "length"


def test_stop_strings_cut_at_first_occurrence(engine):
    (full,) = answers(engine, ["Name three primary colors."])
    text = full.last_message.text
    word = next(w for w in re.findall(r"[A-Za-z]{4,}", text) if text.index(w) > 0)
    (cut,) = answers(engine, ["Name three primary colors."], stop_strings=[word, "zzzz-never"])
    assert cut.last_message.text == text[: text.index(word)]
    assert cut.metadata["finish_reason"] == "stop"


def test_stop_token_ids_end_the_answer(engine, raw):
    (full,) = answers(engine, ["Name three primary colors."])
    tokens = raw.tokenize(full.last_message.text.encode(), add_bos=False)
    stop = tokens[3]
    (cut,) = answers(engine, ["Name three primary colors."], stop_token_ids=[stop])
    assert cut.metadata["usage"]["completion_tokens"] == tokens.index(stop)
    assert full.last_message.text.startswith(cut.last_message.text)


def test_seed_reproduces_sampling_and_other_seeds_differ(engine):
    question = ["Write a sentence about the number 7."]
    first = [answers(engine, question, temperature=1.0, seed=s, max_new_tokens=12)[0].last_message.text for s in (1, 2)]
    again = [answers(engine, question, temperature=1.0, seed=s, max_new_tokens=12)[0].last_message.text for s in (1, 2)]
    assert first == again
    assert len(set(first)) > 1


@pytest.mark.parametrize("seed", [-1, 0xFFFFFFFF, -(2**63), 2**63 - 1])
def test_every_seed_reproduces_sampling_even_llama_cpps_random_sentinel(engine, seed):
    # llama.cpp reads seed 0xFFFFFFFF as "random": seeds that truncate to it must be mapped, not passed on.
    question = ["Write a sentence about the number 7."]
    runs = [answers(engine, question, temperature=1.0, seed=seed, max_new_tokens=16)[0].last_message.text for _ in "ab"]
    assert runs[0] == runs[1] and runs[0]


def test_top_p_and_min_p_narrow_sampling_to_the_top_token(engine):
    question = ["Write a sentence about the number 7."]
    (greedy,) = answers(engine, question)
    (tiny_p,) = answers(engine, question, temperature=1.5, top_p=1e-6, seed=5)
    (full_min_p,) = answers(engine, question, temperature=1.5, min_p=1.0, seed=5)
    assert tiny_p.last_message.text == greedy.last_message.text
    assert full_min_p.last_message.text == greedy.last_message.text


def test_presence_and_frequency_penalties_change_greedy_output(engine):
    question = ["Repeat the word 'cat' twenty times."]
    (plain,) = answers(engine, question)
    (presence,) = answers(engine, question, presence_penalty=2.0)
    (frequency,) = answers(engine, question, frequency_penalty=2.0)
    assert presence.last_message.text != plain.last_message.text
    assert frequency.last_message.text != plain.last_message.text
    assert plain.last_message.text.count("cat") > presence.last_message.text.count("cat")


def test_logit_bias_forces_a_token(engine, raw):
    (token,) = raw.tokenize(b" banana", add_bos=False)
    (by_id,) = answers(engine, ["What is the capital of France?"], logit_bias={token: 100.0}, max_new_tokens=3)
    (by_text,) = answers(engine, ["What is the capital of France?"], logit_bias={" banana": 100.0}, max_new_tokens=3)
    assert by_id.last_message.text == " banana banana banana"
    assert by_text.last_message.text == by_id.last_message.text


def test_logit_bias_key_that_is_several_tokens_is_a_config_error(engine):
    with pytest.raises(ConfigError, match="not one"):
        answers(engine, ["Hi"], logit_bias={"antidisestablishmentarianism": 5.0})


def test_exclude_prompt_from_response_false_keeps_the_rendered_prompt(engine):
    (got,) = answers(engine, ["What is the capital of France?"], exclude_prompt_from_response=False, max_new_tokens=4)
    (short,) = answers(engine, ["What is the capital of France?"], max_new_tokens=4)
    text = got.last_message.text  # the template adds SmolLM's default system prompt
    assert text.startswith("system\nYou are a helpful AI assistant")
    assert text.endswith("user\nWhat is the capital of France?\nassistant\n" + short.last_message.text)


def test_unsupported_params_are_declared_and_strict_refuses_them():
    assert "num_beams" not in LlamaCppInferenceEngine.get_supported_params()
    assert {"seed", "stop_strings", "min_p", "guided_decoding"} <= LlamaCppInferenceEngine.get_supported_params()
    from infermux.engines.capabilities import check_params

    with pytest.raises(UnsupportedParamError, match="num_beams"):
        check_params("LLAMACPP", LlamaCppInferenceEngine.capabilities, GenerationParams(num_beams=4), strict=True)


# ---------------------------------------------------------------------------- guided decoding
def test_json_schema_output_parses(engine):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}, "population": {"type": "integer"}},
        "required": ["city", "population"],
    }
    (got,) = answers(
        engine,
        ["Give the largest city of France and its population as JSON."],
        guided_decoding=GuidedDecodingParams(json=schema),
        max_new_tokens=64,
    )
    data = json.loads(got.last_message.text)
    assert set(data) == {"city", "population"} and isinstance(data["population"], int)


def test_choice_output_is_one_of_the_choices(engine):
    choices = ["positive", "negative", "neutral"]
    out = answers(
        engine,
        ["I love this film!", "This was awful.", "It is a film."],
        guided_decoding=GuidedDecodingParams(choice=choices),
    )
    assert all(c.last_message.text in choices for c in out)


def test_regex_output_fully_matches(engine):
    pattern = r"(\+33 )?0[1-9]( \d\d){4}"
    (got,) = answers(engine, ["Give me a French phone number."], guided_decoding=GuidedDecodingParams(regex=pattern))
    assert re.fullmatch(pattern, got.last_message.text)


def test_regex_translation_and_refusals(engine):
    import llama_cpp

    assert choice_to_gbnf(['a"b', "c\\d\n"]) == 'root ::= "a\\"b" | "c\\\\d\\n"\n'
    assert regex_to_gbnf(r"^ab|c$") == 'root ::= "a" "b" | "c"\n'
    assert regex_to_gbnf(r"[^x]\d{2,3}") == "root ::= [^x] ([0-9]){2,3}\n"
    assert regex_to_gbnf(r"[\d\-\]]") == "root ::= [0-9\\x2D\\x5D]\n"
    vocab = llama_cpp.llama_model_get_vocab(engine._llama.model)
    for pattern in (r"\S+ \W", r"[\]\[\\^]+", r"(yes|no)?", r"a{3}b{2,}c*", r".{1,5}", "é[à-ÿ]\U0001f600"):
        grammar = llama_cpp.llama_sampler_init_grammar(vocab, regex_to_gbnf(pattern).encode(), b"root")
        assert grammar, f"llama.cpp rejected the grammar for {pattern!r}"
        llama_cpp.llama_sampler_free(grammar)
    for bad in (r"(?=a)b", r"(a)\1", r"(?i)abc", r"a^b", r"[^\d]"):
        with pytest.raises(UnsupportedParamError):
            regex_to_gbnf(bad)


# ---------------------------------------------------------------------------- durable loop, streaming
def test_file_job_records_failed_row_and_resume_runs_only_it(engine, tmp_path: Path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    texts = [*QUESTIONS[:3], "word " * 600, *QUESTIONS[3:5]]  # row 4 overflows the 512-token context
    src.write_text("".join(json.dumps({"messages": [{"role": "user", "content": t}]}) + "\n" for t in texts))
    gen = GenerationParams(max_new_tokens=8)
    report = asyncio.run(engine.run_file(str(src), str(out), generation=gen))
    assert report.done == 5 and report.failed == 1
    error = json.loads((tmp_path / "out.jsonl.errors.jsonl").read_text())
    assert error["line"] == 4 and "context holds 512" in error["message"]

    texts[3] = "Say hello."
    src.write_text("".join(json.dumps({"messages": [{"role": "user", "content": t}]}) + "\n" for t in texts))
    report = asyncio.run(engine.run_file(str(src), str(out), generation=gen))
    assert report.ok and report.resumed == 5 and report.done == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["messages"][0]["content"] for r in rows] == texts
    expected = answers(engine, texts, max_new_tokens=8)
    assert [r["messages"][-1]["content"] for r in rows] == [c.last_message.text for c in expected]


def test_stream_yields_pieces_that_add_up_to_the_batch_answer(engine):
    question = conv("Write a haiku about the sea.")
    gen = GenerationParams(max_new_tokens=32, stop_strings=["\n\n"])

    async def collect():
        return [event async for event in engine.astream(question, gen)]

    events = asyncio.run(collect())
    deltas = [e.delta for e in events if not e.final]
    assert len(deltas) > 3
    final = events[-1].conversation
    assert final is not None and "".join(deltas) == final.last_message.text
    (batch,) = engine.infer([question], _config(engine, max_new_tokens=32, stop_strings=["\n\n"]))
    assert final.last_message.text == batch.last_message.text


# ---------------------------------------------------------------------------- model resolution
def test_model_resolution_paths_and_offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    packaged = gguf_path()
    assert resolve_gguf("smollm2-135m-instruct") == packaged
    assert resolve_gguf(str(packaged)) == packaged
    assert resolve_gguf(str(packaged.parent), filename="*.Q4_1.gguf") == packaged
    with pytest.raises(ModelNotFoundError, match="no such file"):
        resolve_gguf(str(tmp_path / "missing.gguf"))

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotFoundError, match=r"not in the local Hugging Face cache.*offline"):
        resolve_gguf("someone/some-model-GGUF", filename="*Q8_0.gguf")
    with pytest.raises(ModelNotFoundError, match=r"model_kwargs\.filename"):
        resolve_gguf("someone/some-model-GGUF")
    # The hub cache layout: refs/main names the snapshot that holds the files.
    repo = tmp_path / "hub" / "models--someone--some-model-GGUF"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "model.Q4_1.gguf").symlink_to(packaged)
    found = resolve_gguf("someone/some-model-GGUF", filename="*Q4_1.gguf")
    assert found.name == "model.Q4_1.gguf" and found.resolve() == packaged.resolve()
    with pytest.raises(ModelNotFoundError, match=r"no \.gguf file"):
        resolve_gguf("someone/some-model-GGUF", filename="*Q8_0.gguf")

    eng = LlamaCppInferenceEngine(
        ModelParams(
            model_name="someone/some-model-GGUF",
            model_max_length=256,
            model_kwargs={"filename": "*Q4_1.gguf", "n_seq_max": 2},
        ),
        generation_params=GenerationParams(max_new_tokens=4),
    )
    try:
        assert eng._llama.n_ctx() == 256  # n_ctx from model_max_length
        assert eng.infer([conv("Hi")])[0].metadata["usage"]["completion_tokens"] >= 1
    finally:
        eng.close()


def test_default_slot_count_keeps_the_kv_cache_under_budget(engine):
    from infermux.engines.llamacpp.loading import default_slots

    # SmolLM2-135M: 30 layers x 3 KV heads x 64 dims, K and V in f16 = 23,040 bytes per token.
    assert default_slots(engine._llama, 2048) == 32  # 1.47 GB, under 1.5 GiB
    assert default_slots(engine._llama, 8192) == (3 << 29) // (23_040 * 8192) == 8


def test_unknown_model_kwarg_is_a_config_error_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"n_gpu_layer.*Did you mean 'n_gpu_layers'"):
        LlamaCppInferenceEngine(ModelParams(model_name="smollm2-135m-instruct", model_kwargs={"n_gpu_layer": 0}))


@pytest.mark.parametrize("name", ["chat_ml", "zephyr"])
def test_builtin_chat_template_name_renders_prompts(engine, raw, name):
    """``chat_template: chat_ml`` (a built-in name) renders the prompt; greedy answers match the library's."""
    from infermux.templates import render_chat_template

    eng = LlamaCppInferenceEngine(
        ModelParams(
            model_name="smollm2-135m-instruct", chat_template=name, model_kwargs={"n_ctx": N_CTX, "n_seq_max": 1}
        ),
        generation_params=GenerationParams(max_new_tokens=16),
    )
    try:
        c = conv("What is the capital of France?")
        rendered = render_chat_template(
            name, [{"role": "user", "content": "What is the capital of France?"}], eos_token="<|im_end|>"
        )
        tokens = eng.prompt_tokens(c)
        assert tokens == raw.tokenize(rendered.encode(), add_bos=False, special=True)
        assert tokens != engine.prompt_tokens(c)  # the model's own template adds a default system prompt
        (out,) = eng.infer([c])
        ref = raw.create_completion(
            tokens, temperature=0.0, max_tokens=16, top_k=0, min_p=0.0, top_p=1.0, stop=["<|im_end|>"]
        )
        assert out.last_message.text.strip() and out.last_message.text == ref["choices"][0]["text"]
    finally:
        eng.close()


def test_a_row_that_is_not_valid_unicode_fails_alone(engine):
    """A lone surrogate given to the engine itself (jobs refuse it before) is that row's invalid_input,
    not the failure of its whole chunk."""
    bad, good = asyncio.run(engine.answer([conv("hi \ud800"), conv("Say hi.")], GenerationParams(max_new_tokens=4)))
    assert isinstance(bad, RowError) and bad.kind == "invalid_input" and "Unicode" in bad.message
    assert isinstance(good, Conversation) and good.last_message.text
