"""Time to first token of a chat turn on the default model: our engines' ``astream`` vs the raw library.

For each local engine (LLAMACPP, NATIVE) this loads the default model once, then answers chat turns the
way ``infermux chat`` does (``engine.astream`` on the whole history) and records the time from the call to
the first text delta, and the total time of the answer. The raw library does the same turns with its
own streaming API (llama.cpp ``create_chat_completion(stream=True)``, transformers ``generate`` with a
``TextIteratorStreamer``). Turns: a first question, and the third question of a conversation whose first
two answers are in the history (what a chat sends after a few turns). Greedy, at most 32 new tokens,
median of ``--repeat`` runs after one warm-up run.

    python benchmarks/bench_chat_ttft.py [--engines LLAMACPP,NATIVE] [--repeat 5] [--live LLAMACPP]

Prints one line per engine and turn with the median time to first token (ms) of both sides and the
ratio ours / raw (1.00 = no overhead).

``--live ENGINES`` also plays whole conversations the way a chat session does (one engine, each turn's
answer appended to the history, a new first question per conversation) and prints the median time to
first token of turns 1, 2 and 3 and the ratio turn 3 / turn 1: with the cache kept between turns, a later
turn evaluates only its new tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MAX_NEW = 32
FIRST = [{"role": "user", "content": "What is the capital of France?"}]
THIRD = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "My favourite colour is green and I live by the sea."},
    {"role": "assistant", "content": "That sounds lovely! Green like the sea on a calm day."},
    {"role": "user", "content": "Suggest a name for my boat."},
    {"role": "assistant", "content": "How about 'Green Wave'? It matches your favourite colour."},
    {"role": "user", "content": "Write a short poem about it."},
]
TURNS = {"first turn": FIRST, "third turn": THIRD}

Timing = tuple[float, float]  # (time to first text, total)


def median_of(turn: Callable[[list[dict[str, str]]], Timing], messages: list[dict[str, str]], repeat: int) -> Timing:
    turn(messages)  # warm-up
    samples = [turn(messages) for _ in range(repeat)]
    return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


# ---------------------------------------------------------------------- ours


def ours(engine_name: str) -> tuple[Callable[[list[dict[str, str]]], Timing], float]:
    from infermux.configs.inference_config import InferenceConfig
    from infermux.engines.registry import build_engine
    from infermux.types import Conversation

    started = time.perf_counter()
    cfg = InferenceConfig.model_validate({"engine": engine_name, "generation": {"max_new_tokens": MAX_NEW}})
    engine = build_engine(cfg)
    load_s = time.perf_counter() - started

    def turn(messages: list[dict[str, str]]) -> Timing:
        conversation = Conversation.model_validate({"messages": messages})

        async def go() -> Timing:
            t0 = time.perf_counter()
            first = None
            async for event in engine.astream(conversation, cfg.generation):
                if event.delta and first is None:
                    first = time.perf_counter() - t0
            total = time.perf_counter() - t0
            return (first if first is not None else total), total

        return asyncio.run(go())

    return turn, load_s


# ---------------------------------------------------------------------- raw libraries


def raw_llamacpp() -> Callable[[list[dict[str, str]]], Timing]:
    from infermux.engines.llamacpp.threads import choose_omp_wait_policy

    choose_omp_wait_policy()  # as the engine would, before llama.cpp loads (both sides share the process)
    from llama_cpp import Llama

    from infermux.engines.llamacpp.cpu import model_defaults
    from infermux.engines.llamacpp.settings import llama_kwargs
    from infermux.models.default import gguf_path

    with model_defaults():  # the engine's load settings (AMX guard), so both sides run the same kernels
        llama = Llama(str(gguf_path()), **llama_kwargs({"n_ctx": 2048}))

    def turn(messages: list[dict[str, str]]) -> Timing:
        t0 = time.perf_counter()
        first = None
        for chunk in llama.create_chat_completion(messages, max_tokens=MAX_NEW, temperature=0.0, stream=True):
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):  # type: ignore[index]
                first = time.perf_counter() - t0
        total = time.perf_counter() - t0
        return (first if first is not None else total), total

    return turn


def raw_transformers() -> Callable[[list[dict[str, str]]], Timing]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

    from infermux.models.default import hf_folder

    folder = str(hf_folder())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    model.eval()

    def turn(messages: list[dict[str, str]]) -> Timing:
        t0 = time.perf_counter()
        inputs = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs: dict[str, Any] = {**inputs, "max_new_tokens": MAX_NEW, "do_sample": False, "streamer": streamer}
        thread = threading.Thread(target=lambda: model.generate(**kwargs))
        thread.start()
        first = None
        for text in streamer:
            if first is None and text:
                first = time.perf_counter() - t0
        thread.join()
        total = time.perf_counter() - t0
        return (first if first is not None else total), total

    return turn


RAW = {"LLAMACPP": raw_llamacpp, "NATIVE": raw_transformers}

LIVE_FOLLOW_UPS = ["Suggest a name for my boat.", "Write a short poem about it."]


def live_chat(engine_name: str, repeat: int) -> list[float]:
    """Median time to first token of turns 1..3 over ``repeat`` conversations played turn by turn, each
    started from an empty prompt cache."""
    from infermux.configs.inference_config import InferenceConfig
    from infermux.engines.registry import build_engine
    from infermux.types import Conversation

    cfg = InferenceConfig.model_validate({"engine": engine_name, "generation": {"max_new_tokens": MAX_NEW}})
    engine = build_engine(cfg)

    async def turn(messages: list[dict[str, str]]) -> tuple[float, str]:
        t0, first, text = time.perf_counter(), None, ""
        async for event in engine.astream(Conversation.model_validate({"messages": messages}), cfg.generation):
            if event.delta and first is None:
                first = time.perf_counter() - t0
            if event.final and event.conversation is not None:
                text = event.conversation.last_message.text
        return (first if first is not None else time.perf_counter() - t0), text

    def new_chat() -> None:
        """Forget the KV the engine kept from the previous conversation: turn 1 is a new chat's first turn
        (else it would start from the previous chat's shared system prompt and opening words)."""
        decoder = getattr(engine, "_decoder", None)  # LLAMACPP's slots
        if decoder is not None:
            decoder.forget_cache()
        kept = getattr(engine, "prompt_cache", None)  # NATIVE's last answer
        if kept is not None:
            kept.take([])

    samples: list[list[float]] = [[], [], []]
    for k in range(repeat + 1):  # the first conversation warms up
        new_chat()
        history = [
            {"role": "system", "content": "You are a helpful assistant."},
            {
                "role": "user",
                "content": f"My favourite colour is {['green', 'blue', 'red', 'grey'][k % 4]} "
                f"and I live by sea number {k}.",
            },
        ]
        for i, follow_up in enumerate([None, *LIVE_FOLLOW_UPS]):
            if follow_up is not None:
                history.append({"role": "user", "content": follow_up})
            ttft, answer = asyncio.run(turn(history))
            history.append({"role": "assistant", "content": answer})
            if k:
                samples[i].append(ttft)
    engine.close()
    return [statistics.median(s) for s in samples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="LLAMACPP,NATIVE")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--live", default="", help="engines whose whole conversations are also timed")
    args = parser.parse_args()
    for name in [e.strip().upper() for e in args.live.split(",") if e.strip()]:
        t1, t2, t3 = live_chat(name, args.repeat)
        print(
            f"{name:9s} live chat TTFT turn 1 {t1 * 1000:7.1f} ms  turn 2 {t2 * 1000:7.1f} ms  "
            f"turn 3 {t3 * 1000:7.1f} ms  ratio turn 3 / turn 1 {t3 / t1:5.2f}"
        )
    print(f"time to first token, default model, greedy, <= {MAX_NEW} new tokens, median of {args.repeat}")
    for name in [e.strip().upper() for e in args.engines.split(",") if e.strip()]:
        try:
            ours_turn, load_s = ours(name)
            raw_turn = RAW[name]()
        except Exception as exc:  # an engine that is not installed or not built yet
            print(f"{name:9s} skipped: {type(exc).__name__}: {exc}")
            continue
        print(f"{name:9s} engine load {load_s:.2f} s")
        for label, messages in TURNS.items():
            o_first, o_total = median_of(ours_turn, messages, args.repeat)
            r_first, r_total = median_of(raw_turn, messages, args.repeat)
            print(
                f"{name:9s} {label:10s} TTFT ours {o_first * 1000:7.1f} ms  raw {r_first * 1000:7.1f} ms  "
                f"ratio {o_first / r_first:5.2f}   answer ours {o_total:.2f} s  raw {r_total:.2f} s"
            )


if __name__ == "__main__":
    main()
