"""NATIVE vs raw transformers on a vision-language model: images per second, 64 rows of the tiny Idefics3.

The model is the tests' tiny Idefics3 (SmolVLM architecture, random weights: tests/vision_model.py, built
once and cached). 64 rows, each one PNG file on disk (sizes vary) and a question; greedy, <= 16 new
tokens. The raw side is what a careful user writes by hand: open the images, render each row with the
processor's chat template, then per batch of 16 one ``processor(text=..., images=..., padding=True)``
call and ``model.generate``. The engine side runs ``engine.infer`` with ``batch_size: 16`` on the same
loaded model (rows given as ``image_path`` parts). Sides alternate, ``INFERMUX_BENCH_REPEATS`` runs each
(best kept); the figure is images per second and the engine/raw ratio (goal: at least 1.0x).

The raw side runs on the engine's own torch thread (the one that loaded the model), so the process holds
one OpenMP team whichever side runs, as a raw user's single-threaded process does. Run in the main thread
while the engine's thread lives, the raw side would get a second team, and libgomp stops spinning between
parallel regions once teams outnumber the cores: that slows the raw side, not the engine
(engines/native/torch_thread.py).

    .venv/bin/python benchmarks/bench_native_vision.py [--rows 64] [--batch 16]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from local_common import Measurement, agreement, repeats_from_env, timed  # noqa: E402

MAX_NEW_TOKENS = 16


def make_images(folder: Path, rows: int) -> list[Path]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(rows):
        width, height = 32 + (i * 7) % 96, 24 + (i * 11) % 80
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def question(i: int) -> str:
    return f"Picture {i}: what is in it?"


def raw_generate(model: Any, processor: Any, paths: list[Path], batch: int) -> list[str]:
    import torch
    from PIL import Image

    answers: list[str] = []
    for start in range(0, len(paths), batch):
        chunk = range(start, min(start + batch, len(paths)))
        pictures = [[Image.open(paths[i]).convert("RGB")] for i in chunk]
        texts = [
            processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question(i)}]}],
                add_generation_prompt=True,
            )
            for i in chunk
        ]
        inputs = processor(text=texts, images=pictures, padding=True, add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        answers += processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()

    from tests.vision_model import tiny_vision_model

    from infermux.configs import GenerationParams, ModelParams
    from infermux.engines.native.engine import NativeTextInferenceEngine
    from infermux.types import Conversation

    folder = tiny_vision_model()
    engine = NativeTextInferenceEngine(
        ModelParams(model_name=str(folder)),
        generation_params=GenerationParams(max_new_tokens=MAX_NEW_TOKENS, batch_size=args.batch),
    )
    model, processor = engine.model, engine._vision.processor  # same weights and processor for both sides
    print(f"model {folder.name}, dtype {model.dtype}, torch threads {__import__('torch').get_num_threads()}")
    with tempfile.TemporaryDirectory() as scratch:
        paths = make_images(Path(scratch), args.rows)
        convs = [
            Conversation.model_validate({"messages": [{"role": "user", "content": [
                {"type": "image_path", "content": str(path)}, {"type": "text", "content": question(i)}]}]})
            for i, path in enumerate(paths)
        ]  # fmt: skip
        engine._torch_thread.run(raw_generate, model, processor, paths[:2], args.batch)  # warm-up
        engine.infer(convs[:2])

        def raw() -> list[str]:  # on the engine's torch thread: one OpenMP team in the process (see below)
            return engine._torch_thread.run(raw_generate, model, processor, paths, args.batch)

        def ours() -> list[str]:
            return [c.last_message.text for c in engine.infer(convs)]

        raw_runs: list[Measurement] = []
        engine_runs: list[Measurement] = []
        for _ in range(repeats_from_env(2)):
            raw_runs.append(timed("raw processor + generate", raw))
            engine_runs.append(timed("infermux NATIVE engine", ours))
    best_raw = min(raw_runs, key=lambda m: m.seconds)
    best_engine = min(engine_runs, key=lambda m: m.seconds)
    shape = f"{args.rows} rows x 1 image, batch {args.batch}, <= {MAX_NEW_TOKENS} new tokens"
    print(f"\nNATIVE vision, tiny Idefics3: {shape}")
    print(f"  {'what':<30} {'seconds':>8} {'images/s':>9}")
    for m in (best_raw, best_engine):
        print(f"  {m.name:<30} {m.seconds:>8.2f} {args.rows / m.seconds:>9.1f}")
    print(f"  ratio engine / raw: {best_raw.seconds / best_engine.seconds:.2f}x   "
          f"(identical rows: {agreement(best_raw, best_engine):.0%})")  # fmt: skip
    engine.close()


if __name__ == "__main__":
    main()
