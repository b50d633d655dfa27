"""Shared pieces of the local-engine benchmarks (NATIVE, LLAMACPP, VLLM).

Every local benchmark runs the same workloads on the default model (SmolLM2-135M-Instruct), greedy, at
most 64 new tokens, and compares our engine with the raw library called directly:

- ``number``: the 32 prompts "Write a sentence about the number {i}."
- ``mixed``: 32 prompts of very different lengths, short ones interleaved with long ones (a few hundred
  tokens of context), the case where batching by length and dropping finished rows pay off.
- ``prefix``: the ``number`` prompts after one shared ~575-token system prompt (:func:`prefix_system`),
  as batch jobs with a long instruction or few-shot prefix have (engines that take it: see each bench).

Throughput is generated tokens per second of wall time, where generated tokens are counted the same way
for both sides: the answer text re-encoded with the model's tokenizer (no special tokens). Speed is only
measured here, never asserted in tests.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

MAX_NEW_TOKENS = 64
N_PROMPTS = 32


def number_prompts(n: int = N_PROMPTS) -> list[str]:
    """The issue's workload: "Write a sentence about the number {i}." for i in 0..n-1."""
    return [f"Write a sentence about the number {i}." for i in range(n)]


_FACTS = [
    "The lighthouse keeper logged the weather every morning at six.",
    "Ships passing the cape signalled with flags during the day and lamps at night.",
    "In winter the harbour froze for three weeks and the ferry stopped running.",
    "The village school had one classroom, a stove, and forty pupils of all ages.",
    "A storm in the autumn of that year tore the roof off the old boat shed.",
    "Fishermen sold their catch on the quay before the market opened in town.",
    "The railway reached the coast late, and with it came the first summer visitors.",
    "Letters arrived twice a week, carried over the hills by a postman on a bicycle.",
]


def _long_prompt(i: int, sentences: int) -> str:
    body = " ".join(_FACTS[(i + k) % len(_FACTS)] for k in range(sentences))
    return f"Read this passage about a coastal village.\n\n{body}\n\nIn one sentence, what is passage {i} about?"


def mixed_prompts(n: int = N_PROMPTS) -> list[str]:
    """Short and long prompts interleaved: even rows are number prompts (~15 tokens), odd rows carry
    passages of 8 to 40 sentences (~130 to ~600 tokens)."""
    prompts = []
    for i in range(n):
        if i % 2 == 0:
            prompts.append(f"Write a sentence about the number {i}.")
        else:
            prompts.append(_long_prompt(i, 8 + (i * 7) % 33))
    return prompts


def prefix_system(sentences: int = 34) -> str:
    """The ``prefix`` workload's shared system prompt (~575 tokens on the default model): a long
    instruction block of the kind batch jobs put before every row."""
    facts = " ".join(_FACTS[k % len(_FACTS)] for k in range(sentences))
    return (
        "You are a careful assistant for a local history society. Background you may draw on:\n\n"
        f"{facts}\n\nAnswer in one or two sentences."
    )


def prefix_messages(n: int = N_PROMPTS) -> list[list[dict[str, str]]]:
    """The prefix workload as chats: the number questions, each after :func:`prefix_system`."""
    return chat_messages(number_prompts(n), prefix_system())


def stream_prompts(n: int = 512) -> list[str]:
    """The VLLM stream workload: many rows whose answers run from a few words to the 64-token cap."""
    asks = ["Name one colour.", "Write a sentence about the number {i}.", "Describe the sea in a few sentences.",
            "In two words, what is {i} plus one?", "Tell a short story about a lighthouse keeper."]  # fmt: skip
    return [asks[i % len(asks)].format(i=i) for i in range(n)]


PROMPTS = number_prompts()

WORKLOADS: dict[str, Callable[[], list[str]]] = {"number": number_prompts, "mixed": mixed_prompts}
#: Larger workloads, run only where named (VLLM's continuous feeding).
LARGE_WORKLOADS: dict[str, Callable[[], list[str]]] = {"stream": stream_prompts}
#: Workloads given as whole chats (a system prompt and a question), not as single prompts.
CHAT_WORKLOADS: dict[str, Callable[[], list[list[dict[str, str]]]]] = {"prefix": prefix_messages}


def chat_messages(prompts: Sequence[str], system: str | None = None) -> list[list[dict[str, str]]]:
    """Each prompt as a one-turn chat (the form every raw library takes), after ``system`` if given."""
    head = [{"role": "system", "content": system}] if system else []
    return [[*head, {"role": "user", "content": p}] for p in prompts]


def conversations(prompts: Sequence[str] | Sequence[list[dict[str, str]]], system: str | None = None) -> list[Any]:
    """Each prompt (or whole chat) as an infermux Conversation (the form our engines take)."""
    from infermux.types import Conversation

    chats = [chat_messages([p], system)[0] if isinstance(p, str) else p for p in prompts]
    return [Conversation.model_validate({"messages": m}) for m in chats]


def workload_chats(name: str) -> list[list[dict[str, str]]]:
    """The chats of workload ``name`` (from ``WORKLOADS`` or ``CHAT_WORKLOADS``)."""
    if name in CHAT_WORKLOADS:
        return CHAT_WORKLOADS[name]()
    return chat_messages({**WORKLOADS, **LARGE_WORKLOADS}[name]())


@dataclass
class Measurement:
    """What one side of a comparison produced, and how long it took."""

    name: str
    texts: list[str]
    seconds: float
    tokens: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def timed(name: str, run: Callable[[], list[str]]) -> Measurement:
    """Run ``run`` once and time it (``perf_counter`` wall time)."""
    start = time.perf_counter()
    texts = run()
    return Measurement(name=name, texts=list(texts), seconds=time.perf_counter() - start)


def count_tokens(measurement: Measurement, encode: Callable[[str], Sequence[int]]) -> Measurement:
    measurement.tokens = sum(len(encode(t)) for t in measurement.texts)
    return measurement


def best_of(repeats: int, name: str, run: Callable[[], list[str]]) -> Measurement:
    """The fastest of ``repeats`` runs (the least disturbed by other work on the machine)."""
    runs = [timed(name, run) for _ in range(max(1, repeats))]
    return min(runs, key=lambda m: m.seconds)


def agreement(a: Measurement, b: Measurement) -> float:
    """Fraction of rows whose texts are identical."""
    same = sum(x == y for x, y in zip(a.texts, b.texts, strict=True))
    return same / max(1, len(a.texts))


def report(title: str, raw: Measurement, engine: Measurement) -> dict[str, float]:
    """Print one comparison (tokens, seconds, tokens/s, ratio) and return its figures."""
    ratio = engine.tokens_per_second / raw.tokens_per_second if raw.tokens_per_second else 0.0
    print(f"\n{title}")
    print(f"  {'what':<34} {'tokens':>7} {'seconds':>8} {'tok/s':>8}")
    for m in (raw, engine):
        print(f"  {m.name:<34} {m.tokens:>7} {m.seconds:>8.2f} {m.tokens_per_second:>8.1f}")
    print(f"  ratio engine / raw: {ratio:.2f}x   (identical rows: {agreement(raw, engine):.0%})")
    return {"raw_tok_s": raw.tokens_per_second, "engine_tok_s": engine.tokens_per_second, "ratio": ratio}


def repeats_from_env(default: int = 2) -> int:
    """``INFERMUX_BENCH_REPEATS`` runs per side (best one kept)."""
    return int(os.environ.get("INFERMUX_BENCH_REPEATS", default))
