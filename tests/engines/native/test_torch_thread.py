"""NATIVE runs its model on one long-lived thread: the load and every batch, whatever event loop calls it.

Each thread that runs torch's parallel CPU kernels gets an OpenMP team of its own; two teams alive at once
make libgomp stop spinning between parallel regions (src/infermux/engines/native/torch_thread.py), which
cost the engine 20-30 % against ``generate`` in the main thread. Before the fix every ``infer`` call ran
the model on a new ``asyncio.to_thread`` worker (a fresh event loop each call) while the model was loaded
on the caller's thread.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from infermux.configs import GenerationParams, ModelParams  # noqa: E402
from infermux.engines.native.engine import NativeTextInferenceEngine  # noqa: E402
from infermux.engines.native.torch_thread import TorchThread  # noqa: E402
from infermux.types import Conversation  # noqa: E402


def test_torch_thread_runs_every_call_on_its_one_thread() -> None:
    worker = TorchThread()
    try:
        seen = [worker.run(threading.current_thread) for _ in range(3)]
        assert len(set(seen)) == 1 and seen[0] is worker.thread and seen[0] is not threading.current_thread()
        # A call made from the thread itself runs inline (no deadlock waiting on itself).
        assert worker.run(lambda: worker.run(threading.current_thread)) is worker.thread
        with pytest.raises(ValueError, match="bad row"):
            worker.run(lambda: (_ for _ in ()).throw(ValueError("bad row")))
        assert worker.submit(lambda x: x + 1, 1).result() == 2
    finally:
        worker.close()


def test_engine_loads_and_answers_on_one_thread_with_the_configured_thread_count(tiny_vision_model: Path) -> None:
    engine = NativeTextInferenceEngine(
        ModelParams(model_name=str(tiny_vision_model)), generation_params=GenerationParams(max_new_tokens=2)
    )
    seen: list[tuple[threading.Thread, int]] = []

    def record(module: Any, args: Any) -> None:
        seen.append((threading.current_thread(), torch.get_num_threads()))

    handle = engine.model.register_forward_pre_hook(record)
    try:
        rows = [Conversation.model_validate({"messages": [{"role": "user", "content": "Hi"}]})]
        engine.infer(rows)  # each infer call runs its own event loop
        engine.infer(rows)
        engine.answer_blocking(rows, engine.generation_params)
    finally:
        handle.remove()
        engine.close()
    threads = {thread for thread, _ in seen}
    assert seen and threads == {engine._torch_thread.thread}, [t.name for t in threads]
    assert engine._torch_thread.thread is not threading.current_thread()
    assert {count for _, count in seen} == {torch.get_num_threads()}
