"""VLLM engine vs raw vLLM ``LLM.chat`` with images, on the tiny Idefics3 of ``tests/vision_model.py``.

Both sides use the same ``vllm.LLM`` (built once by the engine). Rows: ``--rows`` (64) one-turn questions
about PNG files of different sizes written to a temporary folder, every fourth row with two images (80
images for 64 rows). The raw side reads the files, makes ``data:`` URLs and calls ``LLM.chat`` on all rows at
once; the engine side runs ``engine.infer`` on the same rows given as ``image_path`` parts (the durable batch
loop: images read and decoded as each chunk runs, chunks fed into the running engine). Greedy, at most
``--max-new-tokens`` (16) new tokens; vLLM's prefix cache and multi-modal processor cache are emptied before
every run, and the sides alternate, ``INFERMUX_BENCH_REPEATS`` (3) runs each, best kept. The figure is
images per second; the ratio is engine / raw.

    .venv/bin/python benchmarks/bench_vision_vllm.py [--rows 64] [--max-new-tokens 16]
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))


def write_images(folder: Path, rows: int) -> list[list[Path]]:
    """Each row's image files: distinct pictures, 96 to 600 pixels a side; every fourth row has two."""
    from PIL import Image

    out = []
    for row in range(rows):
        files = []
        for k in range(2 if row % 4 == 3 else 1):
            width, height = 96 + (row * 37 + k * 101) % 505, 96 + (row * 53 + k * 71) % 385
            image = Image.new("RGB", (width, height), ((row * 41) % 256, (k * 97 + row * 13) % 256, 128))
            image.paste((255 - (row * 41) % 256, 40, 200), (width // 4, height // 4, width // 2, height // 2))
            path = folder / f"row{row}-{k}.png"
            image.save(path)
            files.append(path)
        out.append(files)
    return out


def question(row: int) -> str:
    return f"Picture {row}: what do you see?"


def raw_messages(files: list[list[Path]]) -> list[list[dict[str, Any]]]:
    def url(path: Path) -> str:
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()

    return [
        [
            {
                "role": "user",
                "content": [
                    *({"type": "image_url", "image_url": {"url": url(p)}} for p in row),
                    {"type": "text", "text": question(i)},
                ],
            }
        ]
        for i, row in enumerate(files)
    ]


def conversations(files: list[list[Path]]) -> list[Any]:
    from infermux.types import Conversation

    return [
        Conversation.model_validate(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            *({"type": "image_path", "content": str(p)} for p in row),
                            {"type": "text", "content": question(i)},
                        ],
                    }
                ]
            }
        )
        for i, row in enumerate(files)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()

    from tests.vision_model import tiny_vision_model
    from vllm import SamplingParams

    from infermux.configs import GenerationParams, ModelParams
    from infermux.engines.vllm.engine import VLLMInferenceEngine

    engine = VLLMInferenceEngine(
        ModelParams(
            model_name=str(tiny_vision_model()),
            model_max_length=1024,
            model_kwargs={"limit_mm_per_prompt": {"image": 2}},
        ),
        generation_params=GenerationParams(max_new_tokens=args.max_new_tokens, temperature=0.0),
    )
    llm = engine.llm
    params = SamplingParams(temperature=0.0, max_tokens=args.max_new_tokens)
    repeats = int(os.environ.get("INFERMUX_BENCH_REPEATS", 3))
    try:
        with tempfile.TemporaryDirectory(prefix="infermux-bench-vision-") as tmp:
            files = write_images(Path(tmp), args.rows)
            n_images = sum(len(row) for row in files)
            convs = conversations(files)

            def raw() -> list[str]:
                return [o.outputs[0].text for o in llm.chat(raw_messages(files), params, use_tqdm=False)]

            def ours() -> list[str]:
                return [c.last_message.text for c in engine.infer(convs)]

            raw()  # warm-up, both paths
            ours()
            best = {"raw vLLM LLM.chat": float("inf"), "infermux VLLM engine": float("inf")}
            texts: dict[str, list[str]] = {}
            for _ in range(repeats):
                for name, run in (("raw vLLM LLM.chat", raw), ("infermux VLLM engine", ours)):
                    llm.reset_prefix_cache()
                    llm.reset_mm_cache()
                    start = time.perf_counter()
                    texts[name] = run()
                    best[name] = min(best[name], time.perf_counter() - start)
        print(f"\nVLLM with images: {args.rows} rows, {n_images} images, <= {args.max_new_tokens} new tokens, greedy")
        print(f"  {'what':<24} {'seconds':>8} {'images/s':>9}")
        for name, seconds in best.items():
            print(f"  {name:<24} {seconds:>8.2f} {n_images / seconds:>9.1f}")
        raw_texts, our_texts = texts.values()
        same = sum(a == b for a, b in zip(raw_texts, our_texts, strict=True))
        ratio = best["raw vLLM LLM.chat"] / best["infermux VLLM engine"]
        print(f"  ratio engine / raw: {ratio:.2f}x   (identical rows: {same}/{len(raw_texts)})")
    finally:
        engine.close()


if __name__ == "__main__":  # vLLM starts its workers with spawn: the guard is required
    main()
