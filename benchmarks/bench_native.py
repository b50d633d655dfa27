"""NATIVE engine vs raw transformers ``generate`` on the default model (bf16, batch 32, greedy).

The raw side is what a careful user writes by hand: render the chat template, tokenize all prompts as
one left-padded batch with its attention mask, ``model.generate(max_new_tokens=64, do_sample=False)``
(KV cache on), decode the new tokens. The engine side runs ``engine.infer`` with ``batch_size: 32`` (the
durable batch loop, length grouping, and the engine's decode loop that drops finished rows). Both sides
use the same loaded model, so the ratio is the engine's own doing. Workloads are those of
``local_common`` (``prefix``: 32 questions after one ~575-token system prompt, which the engine
evaluates once); sides alternate, ``INFERMUX_BENCH_REPEATS`` runs each (best kept). The raw side runs on
the engine's own torch thread, so the process holds one OpenMP team whichever side runs, as a raw user's
process does (a second team, the main thread's, would slow the raw side: engines/native/torch_thread.py).

    .venv/bin/python benchmarks/bench_native.py [--workload number|mixed|prefix|all] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from local_common import (
    CHAT_WORKLOADS,
    MAX_NEW_TOKENS,
    N_PROMPTS,
    WORKLOADS,
    Measurement,
    chat_messages,
    conversations,
    count_tokens,
    repeats_from_env,
    report,
    timed,
    workload_chats,
)


def raw_generate(model: Any, tokenizer: Any, messages: list[list[dict[str, str]]]) -> list[str]:
    """Plain transformers: one left-padded batch, ``generate`` greedy with the KV cache."""
    import torch

    texts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, use_cache=True)
    return list(tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workload", choices=[*WORKLOADS, *CHAT_WORKLOADS, "all"], default="all")
    parser.add_argument("--dtype", default="bfloat16", help="torch_dtype_str for both sides")
    args = parser.parse_args()

    from infermux.configs import GenerationParams, ModelParams
    from infermux.engines.native.engine import NativeTextInferenceEngine

    engine = NativeTextInferenceEngine(
        ModelParams(model_name="smollm2-135m-instruct", torch_dtype_str=args.dtype),
        generation_params=GenerationParams(max_new_tokens=MAX_NEW_TOKENS, batch_size=N_PROMPTS),
    )
    model, tokenizer = engine.model, engine.tokenizer  # same weights for both sides
    print(f"model dtype {model.dtype}, torch threads {__import__('torch').get_num_threads()}")

    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    engine._torch_thread.run(raw_generate, model, tokenizer, chat_messages(["Hello"]))  # warm-up
    engine.infer(conversations(["Hello"]))
    names = [*WORKLOADS, *CHAT_WORKLOADS] if args.workload == "all" else [args.workload]
    for name in names:
        messages = workload_chats(name)
        convs = conversations(messages)

        def raw(messages: list = messages) -> list[str]:  # on the engine's torch thread: one OpenMP team
            return engine._torch_thread.run(raw_generate, model, tokenizer, messages)

        def ours(convs: list = convs) -> list[str]:
            return [c.last_message.text for c in engine.infer(convs)]

        raw_runs: list[Measurement] = []
        engine_runs: list[Measurement] = []
        for _ in range(repeats_from_env(2)):
            raw_runs.append(timed("raw transformers generate", raw))
            engine_runs.append(timed("infermux NATIVE engine", ours))
        best_raw = count_tokens(min(raw_runs, key=lambda m: m.seconds), encode)
        best_engine = count_tokens(min(engine_runs, key=lambda m: m.seconds), encode)
        title = (
            f"NATIVE ({args.dtype}), workload '{name}' ({len(messages)} prompts, batch {N_PROMPTS}, "
            f"<= {MAX_NEW_TOKENS} new tokens, greedy)"
        )
        report(title, best_raw, best_engine)
    engine.close()


if __name__ == "__main__":
    main()
