"""NATIVE engine on the real default model (SmolLM2-135M-Instruct) with real transformers.

One engine is loaded per session; the raw-library comparisons call ``model.generate`` on a model
loaded separately from the same folder.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from infermux.configs import GenerationParams, ModelParams  # noqa: E402
from infermux.configs.generation_params import GuidedDecodingParams  # noqa: E402
from infermux.engines.native.engine import NativeTextInferenceEngine  # noqa: E402
from infermux.errors import EngineUnavailableError, ModelNotFoundError  # noqa: E402
from infermux.jobs.api import default_options, run_job_file  # noqa: E402
from infermux.jobs.loop import JobFiles  # noqa: E402
from infermux.jobs.rows import iter_rows  # noqa: E402
from infermux.models import hf_folder  # noqa: E402
from infermux.samples import read_samples  # noqa: E402
from infermux.types import Conversation  # noqa: E402
from tests.greedy import FLOAT32_SLACK, assert_same_or_near_tie  # noqa: E402

pytestmark = pytest.mark.slow

FRANCE = "What is the capital of France?"
QUESTIONS = [
    FRANCE,
    "Write a sentence about the number 7.",
    "Name three colours.",
    "Explain in one sentence what a computer is, in simple words for a child who is five years old.",
    "Say hello.",
    "What is two plus two?",
]


def conv(text: str) -> Conversation:
    return Conversation.model_validate({"messages": [{"role": "user", "content": text}]})


def answer(engine: NativeTextInferenceEngine, text: str, **generation: Any) -> Conversation:
    return engine.infer([conv(text)], _config(**generation))[0]


def _config(**generation: Any) -> Any:
    from infermux.configs import InferenceConfig

    return InferenceConfig(
        model=ModelParams(model_name="smollm2-135m-instruct"), generation=GenerationParams(**generation)
    )


@pytest.fixture(scope="session")
def engine() -> NativeTextInferenceEngine:
    return NativeTextInferenceEngine(ModelParams(model_name="smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def raw() -> tuple[Any, Any]:
    """The same folder loaded with transformers directly (float32, the ModelParams default)."""
    folder = hf_folder()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, tokenizer


def raw_generate(raw: tuple[Any, Any], questions: list[str], **kwargs: Any) -> list[str]:
    model, tokenizer = raw
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        for q in questions
    ]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**batch, do_sample=False, **kwargs)
    return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def texts(conversations: list[Conversation]) -> list[str]:
    return [c.last_message.text for c in conversations]


def scored_generate(raw: tuple[Any, Any], prompts: list[str], max_new_tokens: int) -> list[tuple[str, list[Any]]]:
    """Greedy ``model.generate`` over the rendered ``prompts`` (one batch, left padded), each answer with its
    tokens' top-2 log-probabilities (log_softmax of each step's scores), OpenAI-shaped for
    :func:`tests.greedy.assert_same_or_near_tie`. A token's text is what it adds to the decoded answer."""
    from types import SimpleNamespace

    model, tokenizer = raw
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(
            **batch, do_sample=False, max_new_tokens=max_new_tokens, output_scores=True, return_dict_in_generate=True
        )
    eos = model.generation_config.eos_token_id
    ends = {tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])}
    answers = []
    for row, sequence in enumerate(out.sequences[:, batch["input_ids"].shape[1] :].tolist()):
        ids: list[int] = []
        entries = []
        for step, token in enumerate(sequence):
            if token in ends:
                break
            logprobs = torch.log_softmax(out.scores[step][row].to(torch.float32), dim=-1)
            values, indices = torch.topk(logprobs, 2)
            before = tokenizer.decode(ids, skip_special_tokens=True)

            def piece(t: int, ids: list[int] = ids, before: str = before) -> str:
                return str(tokenizer.decode([*ids, t], skip_special_tokens=True))[len(before) :]

            alts = [
                SimpleNamespace(token=piece(t), logprob=v)
                for t, v in zip(indices.tolist(), values.tolist(), strict=True)
            ]
            entries.append(SimpleNamespace(token=piece(token), top_logprobs=alts))
            ids.append(token)
        answers.append((str(tokenizer.decode(ids, skip_special_tokens=True)), entries))
    return answers


def render(raw: tuple[Any, Any], messages: list[dict[str, str]]) -> str:
    return str(raw[1].apply_chat_template(messages, add_generation_prompt=True, tokenize=False))


def assert_near(got: list[str], references: list[tuple[str, list[Any]]]) -> None:
    """Each answer equals its reference, or does up to a float32 near-tie of it (tests/greedy.py)."""
    for text, (want, entries) in zip(got, references, strict=True):
        assert_same_or_near_tie(text, entries, slack=FLOAT32_SLACK, reference_text=want)


def alone_scored(engine: NativeTextInferenceEngine, messages: list[dict[str, str]], max_new_tokens: int) -> Any:
    """The engine's answer to ``messages`` alone, with its tokens' top-2 log-probabilities."""
    row = Conversation.model_validate({"messages": messages})
    done = engine.infer([row], _config(max_new_tokens=max_new_tokens, logprobs=True, top_logprobs=2))[0]
    [sample] = read_samples(done)
    assert sample.logprobs is not None and sample.text == done.last_message.text
    return done.last_message.text, sample.logprobs


# ---------------------------------------------------------------- equality with the raw library
def test_greedy_batch_equals_raw_generate(engine: NativeTextInferenceEngine, raw: tuple[Any, Any]) -> None:
    """The engine groups rows by length and evaluates their shared template prefix once: other shapes than
    the raw batch, so equal up to a float32 near-tie."""
    ours = engine.infer([conv(q) for q in QUESTIONS], _config(max_new_tokens=24, batch_size=len(QUESTIONS)))
    assert_near(
        texts(ours), scored_generate(raw, [render(raw, [{"role": "user", "content": q}]) for q in QUESTIONS], 24)
    )
    assert "Paris" in ours[0].last_message.text
    assert all(c.metadata["usage"]["completion_tokens"] <= 24 for c in ours)


def test_batched_rows_equal_rows_alone(engine: NativeTextInferenceEngine) -> None:
    """Left padding and the attention mask make a row's answer independent of its batch mates (up to a
    float32 near-tie: the batch's shape orders the sums)."""
    batched = engine.infer([conv(q) for q in QUESTIONS[:4]], _config(max_new_tokens=16, batch_size=4))
    assert_near(texts(batched), [alone_scored(engine, [{"role": "user", "content": q}], 16) for q in QUESTIONS[:4]])


def test_mixed_lengths_equal_raw_generate_row_by_row(engine: NativeTextInferenceEngine, raw: tuple[Any, Any]) -> None:
    """Very different prompt lengths in one batch: the engine prefills them in separate length groups
    and joins their caches; each answer equals transformers generating that row alone (no padding), up to a
    float32 near-tie."""
    passage = " ".join(f"On day {d} the lighthouse keeper wrote that the sea was calm." for d in range(25))
    questions = ["Say hello.", passage + " What did the keeper write?", "Name a fruit.", QUESTIONS[3]]
    ours = engine.infer([conv(q) for q in questions], _config(max_new_tokens=16, batch_size=4))
    lengths = [c.metadata["usage"]["prompt_tokens"] for c in ours]
    assert max(lengths) > 3 * min(lengths)  # really mixed: more than one prefill group
    alone = [scored_generate(raw, [render(raw, [{"role": "user", "content": q}])], 16)[0] for q in questions]
    assert_near(texts(ours), alone)


def test_beam_search_equals_raw_generate(engine: NativeTextInferenceEngine, raw: tuple[Any, Any]) -> None:
    ours = answer(engine, QUESTIONS[1], max_new_tokens=16, num_beams=3).last_message.text
    assert ours == raw_generate(raw, [QUESTIONS[1]], max_new_tokens=16, num_beams=3)[0]


def test_batch_size_is_honoured_and_rows_grouped_by_length(engine: NativeTextInferenceEngine) -> None:
    shapes: list[tuple[int, int]] = []

    def record(module: Any, args: Any, kwargs: Any) -> None:
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[1] > 1:  # a prefill
            shapes.append(tuple(ids.shape))

    questions = ["Hi.", QUESTIONS[3], "Yo.", QUESTIONS[3] + " Please.", "Ok."]
    handle = engine.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        out = engine.infer([conv(q) for q in questions], _config(max_new_tokens=4, batch_size=2))
    finally:
        handle.remove()
    # Never more than batch_size rows together; every row prefilled exactly once.
    assert all(rows <= 2 for rows, _ in shapes) and sum(rows for rows, _ in shapes) == 5
    # Sorted by length: the short prompts go first, the long ones come last (input order interleaves them).
    widths = [width for _, width in shapes]
    assert widths == sorted(widths) and widths[0] < widths[-1]
    assert len(out) == 5 and all(c.last_message.role.value == "assistant" for c in out)


# ---------------------------------------------------------------- each parameter observably applied
def test_max_new_tokens_caps_length(engine: NativeTextInferenceEngine) -> None:
    out = answer(engine, QUESTIONS[3], max_new_tokens=5)
    assert out.metadata["usage"]["completion_tokens"] == 5
    assert out.metadata["finish_reason"] == "length"


def test_stop_strings_cut_before_the_stop(engine: NativeTextInferenceEngine) -> None:
    full = answer(engine, FRANCE, max_new_tokens=16).last_message.text
    assert "Paris" in full
    cut = answer(engine, FRANCE, max_new_tokens=16, stop_strings=["Paris"])
    assert cut.last_message.text == full[: full.index("Paris")]
    assert cut.metadata["finish_reason"] == "stop"


def test_stop_token_ids_end_the_answer(engine: NativeTextInferenceEngine) -> None:
    of_id = engine.tokenizer.encode(" of", add_special_tokens=False)
    assert len(of_id) == 1
    out = answer(engine, FRANCE, max_new_tokens=16, stop_token_ids=of_id)
    assert out.last_message.text == "The capital of"
    assert out.metadata["finish_reason"] == "stop"


def test_seed_reproduces_sampling_and_temperature_samples(engine: NativeTextInferenceEngine) -> None:
    question, n = QUESTIONS[3], 24
    first = [answer(engine, question, max_new_tokens=n, temperature=1.0, seed=s).last_message.text for s in (1, 2, 3)]
    again = answer(engine, question, max_new_tokens=n, temperature=1.0, seed=1).last_message.text
    greedy = answer(engine, question, max_new_tokens=n).last_message.text
    assert again == first[0]
    assert len(set(first)) > 1  # different seeds, different samples
    assert any(t != greedy for t in first)  # temperature > 0 samples without use_sampling


@pytest.mark.parametrize("seed", [-1, 0xFFFFFFFF, -(2**63), 2**63 - 1])
def test_every_seed_of_the_documented_range_reproduces_sampling(engine: NativeTextInferenceEngine, seed: int) -> None:
    runs = [answer(engine, QUESTIONS[3], max_new_tokens=16, temperature=1.0, seed=seed).last_message.text for _ in "ab"]
    assert runs[0] == runs[1] and runs[0]


def test_top_p_and_min_p_narrow_sampling_to_greedy(engine: NativeTextInferenceEngine) -> None:
    greedy = answer(engine, QUESTIONS[3], max_new_tokens=16).last_message.text
    nucleus = answer(engine, QUESTIONS[3], max_new_tokens=16, temperature=1.5, top_p=1e-6, seed=5)
    min_p = answer(engine, QUESTIONS[3], max_new_tokens=16, temperature=1.5, min_p=1.0, seed=5)
    assert nucleus.last_message.text == greedy
    assert min_p.last_message.text == greedy
    wild = answer(engine, QUESTIONS[3], max_new_tokens=16, temperature=1.5, seed=5).last_message.text
    assert wild != greedy


def test_logit_bias_forces_a_token(engine: NativeTextInferenceEngine) -> None:
    yes = engine.tokenizer.encode(" yes", add_special_tokens=False)
    assert len(yes) == 1
    out = answer(engine, FRANCE, max_new_tokens=4, logit_bias={str(yes[0]): 100.0})
    assert out.last_message.text == " yes yes yes yes"


def test_penalties_reduce_repetition(engine: NativeTextInferenceEngine) -> None:
    question = "Repeat the word cat ten times."
    plain = answer(engine, question, max_new_tokens=24).last_message.text
    penalised = answer(engine, question, max_new_tokens=24, presence_penalty=2.0, frequency_penalty=2.0)
    assert plain.lower().count("cat") > penalised.last_message.text.lower().count("cat")


def test_skip_special_tokens_and_prompt_inclusion(engine: NativeTextInferenceEngine) -> None:
    kept = answer(engine, FRANCE, max_new_tokens=16, skip_special_tokens=False).last_message.text
    assert kept.endswith("<|im_end|>")
    whole = answer(engine, FRANCE, max_new_tokens=16, exclude_prompt_from_response=False).last_message.text
    assert FRANCE in whole and whole.endswith("Paris.") and whole.index(FRANCE) < whole.index("Paris")


@pytest.mark.parametrize(
    ("guided", "check"),
    [
        ({"choice": ["red", "green", "blue"]}, lambda t: t in {"red", "green", "blue"}),
        ({"regex": r"[0-9]{3}-[0-9]{2}"}, lambda t: re.fullmatch(r"[0-9]{3}-[0-9]{2}", t) is not None),
        (
            {"json": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                      "required": ["city"], "additionalProperties": False}},
            lambda t: isinstance(json.loads(t)["city"], str),
        ),
    ],
)  # fmt: skip
def test_guided_decoding(engine: NativeTextInferenceEngine, guided: dict[str, Any], check: Any) -> None:
    out = answer(engine, FRANCE, max_new_tokens=40, guided_decoding=GuidedDecodingParams.model_validate(guided))
    assert check(out.last_message.text), out.last_message.text


def test_streaming_adds_up_to_the_batch_answer(engine: NativeTextInferenceEngine) -> None:
    generation = GenerationParams(max_new_tokens=20)

    async def collect() -> tuple[list[str], Conversation]:
        deltas, final = [], None
        async for event in engine.astream(conv(FRANCE), generation):
            if event.final:
                final = event.conversation
            else:
                deltas.append(event.delta)
        assert final is not None
        return deltas, final

    deltas, final = asyncio.run(collect())
    expected = answer(engine, FRANCE, max_new_tokens=20).last_message.text
    assert len(deltas) > 1
    assert "".join(deltas) == final.last_message.text == expected


def test_images_are_refused_as_row_errors(engine: NativeTextInferenceEngine) -> None:
    picture = Conversation.model_validate(
        {"messages": [{"role": "user", "content": [{"type": "image_url", "content": "http://x/cat.png"}]}]}
    )
    out = engine.infer([picture, conv("Say hello.")], _config(max_new_tokens=4))
    assert "does not accept images" in out[0].metadata["error"]["message"]
    assert out[1].last_message.role.value == "assistant"


# ---------------------------------------------------------------- the durable loop
def _write_input(path: Path, questions: list[str]) -> Path:
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}]}) + "\n" for q in questions))
    return path


def test_file_job_and_resume(engine: NativeTextInferenceEngine, tmp_path: Path) -> None:
    generation = GenerationParams(max_new_tokens=12, batch_size=2)
    src = _write_input(tmp_path / "in.jsonl", QUESTIONS[:4])
    full = tmp_path / "full.jsonl"
    report = asyncio.run(engine.run_file(str(src), str(full), generation=generation))
    assert report.ok and report.done == 4
    expected = [json.loads(line) for line in full.read_text().splitlines()]

    # A job that stopped after two rows: its partial file holds them; the rerun runs only the rest.
    out = tmp_path / "out.jsonl"
    files = JobFiles(out, engine._fingerprint(generation))
    files.open()
    rows = list(iter_rows(str(src)))
    for row, done in zip(rows[:2], expected[:2], strict=True):
        files.append_done(row, Conversation.model_validate(done))
    files.close()
    # Without the answer cache: the two missing rows must be answered by the engine, not the first run's cache.
    no_cache = default_options(engine, generation, cache=False)
    report = asyncio.run(run_job_file(engine, str(src), str(out), generation=generation, options=no_cache))
    assert report.resumed == 2 and report.done == 2 and report.ok
    assert [json.loads(line) for line in out.read_text().splitlines()] == expected
    assert report.completion_tokens > 0


# ---------------------------------------------------------------- model settings
def test_model_settings_template_dtype_attention_and_truncation(caplog: pytest.LogCaptureFixture) -> None:
    template = "{% for m in messages %}Question: {{ m['content'] }}\n{% endfor %}Answer:"
    other = NativeTextInferenceEngine(
        ModelParams(
            model_name="smollm2-135m-instruct",
            chat_template=template,
            torch_dtype_str="bfloat16",
            attn_implementation="eager",
            device_map="cpu",
            model_max_length=8,
        )
    )
    try:
        assert other.model.dtype == torch.bfloat16
        assert other.model.config._attn_implementation == "eager"
        assert other.model.device.type == "cpu"
        with caplog.at_level(logging.WARNING, logger="infermux.engines.native.engine"):
            out = other.infer(
                [conv("one two three four five six seven eight nine ten")],
                _config(max_new_tokens=3, exclude_prompt_from_response=False),
            )[0]
        assert "model_max_length 8" in caplog.text
        assert out.metadata["usage"]["prompt_tokens"] == 8
        # The override template rendered the prompt: its last 8 tokens end with "Answer:".
        assert "Answer:" in out.last_message.text and "<|im_start|>" not in out.last_message.text
    finally:
        other.close()


def test_lora_adapter_matches_peft_directly(tiny_lora: Path, raw: tuple[Any, Any]) -> None:
    from peft import PeftModel

    adapted = NativeTextInferenceEngine(ModelParams(model_name="smollm2-135m-instruct", adapter_model=str(tiny_lora)))
    try:
        ours = adapted.infer([conv(q) for q in QUESTIONS[:2]], _config(max_new_tokens=12, batch_size=2))
    finally:
        adapted.close()
    base_model, tokenizer = raw
    folder = hf_folder()
    fresh = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(fresh, str(tiny_lora)).eval()
    expected = raw_generate((peft_model, tokenizer), QUESTIONS[:2], max_new_tokens=12)
    base = raw_generate((base_model, tokenizer), QUESTIONS[:2], max_new_tokens=12)
    assert texts(ours) == expected
    assert expected != base  # the adapter really changes the answers


def test_gguf_file_loads_through_transformers() -> None:
    from infermux.models import gguf_path

    from_gguf = NativeTextInferenceEngine(ModelParams(model_name=str(gguf_path()), torch_dtype_str="bfloat16"))
    try:
        out = from_gguf.infer([conv(FRANCE)], _config(max_new_tokens=10))[0]
    finally:
        from_gguf.close()
    assert "Paris" in out.last_message.text


def test_quantization_on_cpu_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("has CUDA: bitsandbytes would really run")
    with pytest.raises(EngineUnavailableError, match="CUDA"):
        NativeTextInferenceEngine(ModelParams(model_name="smollm2-135m-instruct", model_kwargs={"load_in_4bit": True}))


def test_uncached_hub_model_fails_clearly_offline() -> None:
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        NativeTextInferenceEngine(ModelParams(model_name="someone/not-a-cached-model-xyz"))


def test_chat_template_auto_keeps_the_tokenizers_own() -> None:
    """Oumi's ``chat_template: auto`` (issue 23, item 14): the tokenizer's template, not a cleared one."""
    from infermux.engines.native.loading import load_tokenizer

    own = load_tokenizer(ModelParams(model_name="smollm2-135m-instruct")).chat_template
    auto = load_tokenizer(ModelParams(model_name="smollm2-135m-instruct", chat_template="auto")).chat_template
    assert own and auto == own


def test_builtin_chat_template_name_becomes_the_tokenizers_template() -> None:
    """NATIVE renders prompts with the tokenizer load_tokenizer returns; a built-in name sets its template."""
    from infermux.engines.native.loading import load_tokenizer
    from infermux.templates import render_chat_template

    tokenizer = load_tokenizer(ModelParams(model_name="smollm2-135m-instruct", chat_template="phi3-instruct"))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert (
        rendered
        == render_chat_template("phi3-instruct", messages)
        == "<|system|>\nBe brief.<|end|>\n<|user|>\nHi!<|end|>\n<|assistant|>\n"
    )


# ---------------------------------------------------------------- shared prefixes and chat turns
SYSTEM = "You are a careful assistant for a local history society. Background notes: " + " ".join(
    f"In year {1800 + y} the harbour of the village handled {y * 37 % 500} ships and {y * 11 % 90} storms."
    for y in range(14)
)


def chat(*turns: str, system: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    for i, text in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return messages


def test_shared_prefix_rows_equal_raw_generate_row_by_row(
    engine: NativeTextInferenceEngine, raw: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows sharing a long system prompt, not adjacent in the input: the prefix is evaluated once for
    them (counted below) and every answer equals transformers generating that row alone (up to a float32
    near-tie)."""
    from infermux.engines.native import decode

    chats = [chat(q, system=SYSTEM) for q in QUESTIONS[:4]]
    rows = [chats[0], chat("Say hello."), chats[1], chats[2], chat("Name a fruit."), chats[3]]
    prefill_widths: list[int] = []
    forward = engine.model.forward

    def counting(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("logits_to_keep") == 1:  # a prefill call (decode steps keep all logits)
            prefill_widths.append(int(kwargs["input_ids"].shape[0] * kwargs["input_ids"].shape[1]))
        return forward(*args, **kwargs)

    monkeypatch.setattr(engine.model, "forward", counting)
    ours = engine.infer(
        [Conversation.model_validate({"messages": m}) for m in rows], _config(max_new_tokens=16, batch_size=6)
    )
    monkeypatch.undo()
    prompt_tokens = [c.metadata["usage"]["prompt_tokens"] for c in ours]
    assert min(prompt_tokens[i] for i in (0, 2, 3, 5)) > 300
    # Without sharing, the prefill would evaluate at least the four long prompts in full.
    assert sum(prefill_widths) < sum(prompt_tokens[i] for i in (0, 2, 3, 5)) // 2
    assert_near(texts(ours), [scored_generate(raw, [render(raw, m)], 16)[0] for m in rows])
    assert decode.PREFIX_MIN < 300


def test_chat_turns_reuse_the_previous_turns_cache(engine: NativeTextInferenceEngine) -> None:
    """Streaming a chat turn by turn: turn 3 evaluates only the tokens after what the cache holds, and
    each answer equals the same turn streamed from a fresh cache (greedy), up to a float32 near-tie (a
    partial prefill sums in another order than a whole one)."""
    generation = GenerationParams(max_new_tokens=24)
    assert engine.prompt_cache is not None
    engine.prompt_cache.cache = None  # turn 1 starts cold (an earlier test's cache shares a few tokens)

    def stream_final(messages: list[dict[str, str]], params: GenerationParams) -> Conversation:
        async def run() -> Conversation:
            final = None
            async for event in engine.astream(Conversation.model_validate({"messages": messages}), params):
                final = event.conversation if event.final else final
            assert final is not None
            return final

        return asyncio.run(run())

    def stream(messages: list[dict[str, str]]) -> str:
        return stream_final(messages, generation).last_message.text

    questions = [FRANCE, "And of Italy?", "Which of the two is larger?"]
    turns: list[str] = []
    evaluated, totals = [], []
    for question in questions:
        turns.append(question)
        messages = chat(*turns, system=SYSTEM)
        turns.append(stream(messages))
        evaluated.append(engine.prompt_cache.last_evaluated)
        totals.append(len(engine._prompt_ids(Conversation.model_validate({"messages": messages}))))
    # Turn 3: only the new turn's tokens (its text and a dozen tokens of chat markup) were evaluated.
    assert evaluated[0] == totals[0]
    assert evaluated[2] <= len(engine.tokenizer(questions[2], add_special_tokens=False)["input_ids"]) + 12
    assert evaluated[2] < totals[2] // 4

    scored = GenerationParams(max_new_tokens=24, logprobs=True, top_logprobs=2)
    for i in range(len(questions)):
        engine.prompt_cache.cache = None  # no reuse: the turn evaluates its whole prompt
        final = stream_final(chat(*turns[: 2 * i + 1], system=SYSTEM), scored)  # the history the cached turn saw
        assert engine.prompt_cache.last_evaluated == totals[i]
        [sample] = read_samples(final)
        assert sample.logprobs is not None
        assert_same_or_near_tie(
            turns[2 * i + 1], sample.logprobs, slack=FLOAT32_SLACK, reference_text=final.last_message.text
        )


def test_a_text_only_model_takes_no_images(engine: NativeTextInferenceEngine) -> None:
    """NATIVE takes images with image-text-to-text models only (tests/engines/native/test_vision.py): on a
    text-only model the instance says so (serve and chat read it) and image rows fail as unsupported."""
    assert NativeTextInferenceEngine.capabilities.images and not engine.capabilities.images
    parts = [{"type": "image_url", "content": "data:image/png;base64,iVBORw0KGgo="}, {"type": "text", "content": "?"}]
    row = Conversation.model_validate({"messages": [{"role": "user", "content": parts}]})
    (answer,) = engine.infer([row])
    assert answer.metadata["error"]["kind"] == "unsupported_input"
