"""Checking a greedy answer where no raw run can share its batch.

vLLM does not promise that a request's greedy answer is independent of the requests it shares a batch
with, nor of what its prefix cache held: other batch shapes sum the same products in another order, and
on some CPUs (Sapphire Rapids with AMX, bf16) that turns a near-tie the other way. An answer produced
while other rows came and went (the engine's continuous feeding, concurrent streams, an abort) therefore
cannot be compared token for token with a raw run, whose batches differ. What holds on any CPU:

* the request's prompt tokens are exactly those the raw library renders for the row;
* each answer token was the model's top choice given the prompt and the answer before it, up to the
  rounding that batch shapes move (``GREEDY_SLACK``), and the answer ends with the end-of-turn token or at
  the token limit.

:func:`assert_greedy` scores whole answers in one vLLM pass (prompt log-probabilities over prompt + answer)
and checks the second point. A sampled answer (temperature 1), a wrong row or a cut answer fails it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: How far (in nats) below the top token an answer token may score. This model's bf16 logits are about
#: 10-30, where bf16 steps are 0.06-0.125; a different batch shape moves a logit by a few steps at most.
#: A sampled token is usually far below the top: over a 40-token answer, one such step fails the check.
GREEDY_SLACK = 0.5

#: The same for float32 (NATIVE's default dtype): another batch shape (padding, rows joining mid-decode, a
#: shared prefix evaluated once) reorders float32 sums, about 1e-6 relative. Measured here (SmolLM2-135M,
#: 8 streams of 32 tokens decoded together vs alone): log-probabilities moved by at most 2.2e-5 nats.
#: 1e-3 nats is some 45 times that, and 5 times below the closest top-2 gap in these tests' answers
#: (0.0053 nats over some 1,200 reference tokens; the median is about 1.2 nats): a clear choice never passes.
FLOAT32_SLACK = 1e-3

#: llama.cpp computes in float32 (on Q4_1 weights, with activations quantized per row, which the batch does
#: not change), so a batch shape moves its logits by float32 rounding too. Measured here: the same 8 streams
#: gave bit-identical log-probabilities together and alone (the same kernels ran for 1 and 8 sequences);
#: CPUs whose multi-row kernels differ (repacked or AMX buffers) reorder the sums, which float32 rounding
#: bounds as above. Same slack, same margin below the closest gap (0.0053 nats, through ``infermux serve``).
LLAMACPP_SLACK = FLOAT32_SLACK


def reset_prefix_cache(llm: Any) -> None:
    """Empty vLLM's prefix cache, so that the next run prefills its prompts whole (a run that reuses cached
    blocks prefills only the rest: another shape, other rounding)."""
    assert llm.reset_prefix_cache() is not False, "vLLM could not reset its prefix cache (requests running?)"


def assert_greedy(
    llm: Any,
    answers: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    max_tokens: int,
    slack: float = GREEDY_SLACK,
) -> float:
    """Every ``(prompt_ids, answer_ids)`` pair is a greedy answer of ``llm``'s model (see the module doc):
    each answer token within ``slack`` of the top token, and the answer either ``max_tokens`` long or ended
    by an end-of-turn token. Returns the largest gap seen (for the failure messages of callers)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    ends = set(_end_tokens(llm))
    for row, (_, answer) in enumerate(answers):
        assert answer, f"row {row}: an empty answer"
        assert len(answer) <= max_tokens, f"row {row}: {len(answer)} tokens, more than {max_tokens}"
        assert len(answer) == max_tokens or answer[-1] in ends, (
            f"row {row}: ended after {len(answer)} of {max_tokens} tokens without an end-of-turn token"
        )
    prompts = [TokensPrompt(prompt_token_ids=[*prompt, *answer]) for prompt, answer in answers]
    scored = llm.generate(prompts, SamplingParams(max_tokens=1, prompt_logprobs=1), use_tqdm=False)
    worst = 0.0
    tokenizer = llm.get_tokenizer()
    for row, ((prompt, answer), out) in enumerate(zip(answers, scored, strict=True)):
        for step, token in enumerate(answer):
            choices = out.prompt_logprobs[len(prompt) + step]
            top = max(choices.values(), key=lambda lp: lp.logprob)
            gap = top.logprob - choices[token].logprob
            worst = max(worst, gap)
            assert gap <= slack, (
                f"row {row}, answer token {step}: {tokenizer.decode([token])!r} scores {gap:.3f} below the top "
                f"token {top.decoded_token!r} (slack {slack}): not a greedy answer to its prompt"
            )
    return worst


def _end_tokens(llm: Any) -> list[int]:
    """The ids that end an answer: the tokenizer's end token and the generation config's."""
    ids: list[Any] = [llm.get_tokenizer().eos_token_id]
    for found in (
        llm.llm_engine.model_config.hf_config.eos_token_id,
        (llm.llm_engine.model_config.try_get_generation_config() or {}).get("eos_token_id"),
    ):
        ids.extend(found if isinstance(found, list) else [found])
    return [i for i in ids if isinstance(i, int)]


def assert_same_or_near_tie(
    text: str, reference: Sequence[Any], *, slack: float = GREEDY_SLACK, reference_text: str | None = None
) -> float:
    """``text`` is the greedy answer whose tokens and top-2 alternatives are ``reference`` (OpenAI-shaped
    ``logprobs.content``: ``.token``, ``.top_logprobs``), computed in another batch: equal to it, or equal up
    to a token where ``text`` took another of the reference's choices within ``slack`` nats of the one it took
    (another batch shape may round that near-tie the other way, and an exact tie may be listed in either
    order; the two answers are unrelated after it).
    A wrong row, a mixed-up stream or a sampled answer leaves the reference where its choice was clear.
    ``reference_text`` (the reference's answer, where a stop string cut it inside its tokens): equal passes.
    Returns the smallest top-2 gap of the reference tokens compared (what the slack must stay below)."""
    gaps = [_top2_gap(step, entry) for step, entry in enumerate(reference)]
    closest = min(gaps, default=float("inf"))
    if text == reference_text:
        return closest
    pos = 0
    for step, (entry, gap) in enumerate(zip(reference, gaps, strict=True)):
        if text.startswith(entry.token, pos):
            pos += len(entry.token)
            continue
        # The other choices within ``slack`` of the one the reference took (an exact tie lists either first).
        near = [alt for alt in entry.top_logprobs if alt.token != entry.token and entry.logprob - alt.logprob <= slack]
        assert any(text.startswith(alt.token, pos) for alt in near), (
            f"token {step}: {text[pos : pos + 20]!r} leaves the reference's {entry.token!r} where its top choice led "
            f"by {gap:.3f} nats (slack {slack}): not the same greedy answer\n{text!r}"
        )
        return closest
    assert pos == len(text), f"longer than the reference: {text[pos:]!r} after its {len(reference)} tokens"
    return closest


def _top2_gap(step: int, entry: Any) -> float:
    best = sorted((alt.logprob for alt in entry.top_logprobs), reverse=True)
    assert len(best) >= 2, f"token {step}: the reference needs top_logprobs >= 2"
    return float(best[0] - best[1])


def llama_cpp_logprobs(reply: dict[str, Any]) -> list[Any]:
    """``create_chat_completion(logprobs=True)``'s first choice's tokens (dicts) as the attributes
    :func:`assert_same_or_near_tie` reads."""
    from types import SimpleNamespace

    def entry(item: dict[str, Any]) -> Any:
        alts = [SimpleNamespace(token=a["token"], logprob=a["logprob"]) for a in item["top_logprobs"]]
        return SimpleNamespace(token=item["token"], top_logprobs=alts)

    return [entry(item) for item in reply["choices"][0]["logprobs"]["content"]]
