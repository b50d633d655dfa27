"""LLAMACPP engine vs raw llama-cpp-python ``create_chat_completion``, one conversation at a time.

The raw side is the library's chat API called in a loop (what Oumi's LLAMACPP engine does), greedy,
64 new tokens, on the embedded SmolLM2-135M GGUF, library defaults otherwise. The engine side runs
``engine.infer`` on all prompts (several sequences per llama.cpp decode call). Workloads are those of
``local_common`` plus ``prefix`` (the number prompts after a shared ~575-token system prompt); sides
alternate, ``INFERMUX_BENCH_REPEATS`` runs each (best kept). Each engine run starts from an empty cache
(as the first chunk of a job does), while the raw library keeps its previous call's prompt prefix.

    .venv/bin/python benchmarks/bench_llamacpp.py [--workload number|mixed|prefix|all] [--slots 16,32]

Prints the load average before each workload: figures taken on a busy machine are not comparable.
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
    MAX_NEW_TOKENS,
    WORKLOADS,
    Measurement,
    chat_messages,
    conversations,
    count_tokens,
    prefix_system,
    repeats_from_env,
    report,
    timed,
)

N_CTX = 2048
RAW_SETTINGS = {"temperature": 0.0, "max_tokens": MAX_NEW_TOKENS, "top_k": 0, "top_p": 1.0, "min_p": 0.0}


def raw_one_at_a_time(llm: Any, messages: list[list[dict[str, str]]]) -> list[str]:
    """Plain llama-cpp-python: one ``create_chat_completion`` per conversation."""
    return [llm.create_chat_completion(m, **RAW_SETTINGS)["choices"][0]["message"]["content"] for m in messages]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workload", choices=[*WORKLOADS, "prefix", "all"], default="all")
    parser.add_argument("--slots", default="32", help="comma-separated model_kwargs.n_seq_max values to run")
    args = parser.parse_args()

    from infermux.engines.llamacpp.engine import LlamaCppInferenceEngine
    from infermux.engines.llamacpp.threads import choose_omp_wait_policy

    choose_omp_wait_policy()  # what the engine would choose, before llama.cpp loads (both sides share it)
    from llama_cpp import Llama

    from infermux.configs import GenerationParams, ModelParams
    from infermux.engines.llamacpp.cpu import model_defaults
    from infermux.engines.llamacpp.settings import llama_kwargs
    from infermux.models import gguf_path

    with model_defaults():  # the engine's load settings (AMX guard), so both sides run the same kernels
        llm = Llama(model_path=str(gguf_path()), **llama_kwargs({"n_ctx": N_CTX}))
    print(f"llama.cpp threads: generation {llm.n_threads}, batch {llm.context_params.n_threads_batch}")
    print(f"OMP_WAIT_POLICY: {os.environ.get('OMP_WAIT_POLICY', '(unset: libgomp default, spin then sleep)')}")

    def encode(text: str) -> list[int]:
        return list(llm.tokenize(text.encode("utf-8"), add_bos=False))

    engines = {
        int(s): LlamaCppInferenceEngine(
            ModelParams(model_name="smollm2-135m-instruct", model_kwargs={"n_ctx": N_CTX, "n_seq_max": int(s)}),
            generation_params=GenerationParams(max_new_tokens=MAX_NEW_TOKENS),
        )
        for s in args.slots.split(",")
    }
    raw_one_at_a_time(llm, chat_messages(["Hello"]))  # warm-up
    for engine in engines.values():
        engine.infer(conversations(["Hello"]))

    names = [*WORKLOADS, "prefix"] if args.workload == "all" else [args.workload]
    for name in names:
        system = prefix_system() if name == "prefix" else None
        prompts = WORKLOADS["number" if name == "prefix" else name]()
        messages, convs = chat_messages(prompts, system), conversations(prompts, system)
        if system:
            print(f"\nshared system prompt: {len(encode(system))} tokens")
        print(f"load average before '{name}': {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        raw_runs: list[Measurement] = []
        engine_runs: dict[int, list[Measurement]] = {s: [] for s in engines}

        def raw(messages: list = messages) -> list[str]:
            return raw_one_at_a_time(llm, messages)

        for _ in range(repeats_from_env(2)):
            raw_runs.append(timed("raw create_chat_completion, 1 at a time", raw))
            for slots, engine in engines.items():

                def ours(engine: LlamaCppInferenceEngine = engine, convs: list = convs) -> list[str]:
                    engine._decoder.forget_cache()  # no head start from the previous run
                    return [c.last_message.text for c in engine.infer(convs)]

                engine_runs[slots].append(timed(f"infermux LLAMACPP, n_seq_max={slots}", ours))
        best_raw = count_tokens(min(raw_runs, key=lambda m: m.seconds), encode)
        for slots, runs in engine_runs.items():
            best = count_tokens(min(runs, key=lambda m: m.seconds), encode)
            title = (
                f"LLAMACPP (SmolLM2-135M Q4_1), workload '{name}' ({len(prompts)} prompts, "
                f"n_seq_max {slots}, <= {MAX_NEW_TOKENS} new tokens, greedy)"
            )
            report(title, best_raw, best)
    for engine in engines.values():
        engine.close()
    llm.close()


if __name__ == "__main__":
    main()
