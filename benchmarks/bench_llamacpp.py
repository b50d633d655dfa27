"""LLAMACPP engine vs raw llama-cpp-python ``create_chat_completion`` one conversation at a time.

32 prompts "Write a sentence about the number {i}.", 64 new tokens, greedy, the embedded SmolLM2-135M
GGUF. Prints tokens/s for both, the ratio, and how many answers are identical.

    .venv/bin/python benchmarks/bench_llamacpp.py [--slots 16] [--sweep 4,8,16,32]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

N_PROMPTS = 32
MAX_NEW_TOKENS = 64
N_CTX = 2048


def bench_prompts() -> list[str]:
    try:  # the shared harness of the local-engine benchmarks, when present
        from local_common import PROMPTS  # type: ignore[import-not-found]

        return list(PROMPTS)
    except ImportError:
        return [f"Write a sentence about the number {i}." for i in range(N_PROMPTS)]


def run_raw(prompts: list[str]) -> tuple[float, int, list[str]]:
    from llama_cpp import Llama

    from infermux.models import gguf_path

    llm = Llama(model_path=str(gguf_path()), n_ctx=N_CTX, verbose=False)
    settings = {"temperature": 0.0, "max_tokens": MAX_NEW_TOKENS, "top_k": 0, "top_p": 1.0, "min_p": 0.0}
    llm.create_chat_completion([{"role": "user", "content": "Hello"}], **settings)  # warm-up
    texts, tokens = [], 0
    start = time.perf_counter()
    for prompt in prompts:
        out = llm.create_chat_completion([{"role": "user", "content": prompt}], **settings)
        texts.append(out["choices"][0]["message"]["content"])
        tokens += out["usage"]["completion_tokens"]
    elapsed = time.perf_counter() - start
    llm.close()
    return elapsed, tokens, texts


def run_engine(prompts: list[str], slots: int) -> tuple[float, int, list[str]]:
    from infermux.configs import GenerationParams, ModelParams
    from infermux.engines.llamacpp import LlamaCppInferenceEngine
    from infermux.types import Conversation

    engine = LlamaCppInferenceEngine(
        ModelParams(model_name="smollm2-135m-instruct", model_kwargs={"n_ctx": N_CTX, "n_seq_max": slots}),
        generation_params=GenerationParams(max_new_tokens=MAX_NEW_TOKENS, temperature=0.0),
    )
    convs = [Conversation.model_validate({"messages": [{"role": "user", "content": p}]}) for p in prompts]
    engine.infer(convs[:1])  # warm-up
    start = time.perf_counter()
    out = engine.infer(convs)
    elapsed = time.perf_counter() - start
    engine.close()
    tokens = sum(int(c.metadata["usage"]["completion_tokens"]) for c in out)
    return elapsed, tokens, [c.last_message.text for c in out]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=16, help="sequences decoded together (model_kwargs.n_seq_max)")
    parser.add_argument("--sweep", default="", help="comma-separated slot counts to try instead of --slots")
    args = parser.parse_args()
    prompts = bench_prompts()
    raw_s, raw_tokens, raw_texts = run_raw(prompts)
    raw_rate = raw_tokens / raw_s
    print(f"{'what':<44} {'tokens':>7} {'seconds':>8} {'tok/s':>8} {'ratio':>6} {'same':>6}")
    print(f"{'raw create_chat_completion, one at a time':<44} {raw_tokens:>7} {raw_s:>8.2f} {raw_rate:>8.1f} {1:>6.2f}")
    for slots in [int(s) for s in args.sweep.split(",") if s] or [args.slots]:
        seconds, tokens, texts = run_engine(prompts, slots)
        rate = tokens / seconds
        same = sum(a == b for a, b in zip(texts, raw_texts, strict=True))
        name = f"infermux LLAMACPP, n_seq_max={slots}"
        print(f"{name:<44} {tokens:>7} {seconds:>8.2f} {rate:>8.1f} {rate / raw_rate:>6.2f} {same:>3}/{len(prompts)}")


if __name__ == "__main__":
    main()
