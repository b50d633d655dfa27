"""What llama.cpp reports about this CPU, and the line the LLAMACPP engine logs when a model loads."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("llama_cpp")

from infermux.configs import ModelParams
from infermux.engines.llamacpp.cpu import default_use_extra_bufts, parse_system_info, system_info, system_info_text
from infermux.engines.llamacpp.engine import LlamaCppInferenceEngine


def test_system_info_is_the_librarys_line_parsed() -> None:
    import llama_cpp

    assert system_info_text() == llama_cpp.llama_print_system_info().decode().strip()
    assert system_info() == parse_system_info(system_info_text())
    assert "CPU" in system_info()


@pytest.mark.slow
def test_loading_a_model_logs_features_extra_buffer_types_and_threads(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="infermux")
    engine = LlamaCppInferenceEngine(ModelParams(model_name="smollm2-135m-instruct", model_kwargs={"n_ctx": 256}))
    try:
        llama = engine._llama
        [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("llama.cpp loaded ")]
    finally:
        engine.close()
    enabled = [k for k, v in system_info()["CPU"].items() if v == "1"]
    assert " ".join(enabled) in line
    assert f"extra buffer types {'on' if default_use_extra_bufts() else 'off'}" in line
    assert f"n_threads {llama.n_threads}, n_threads_batch {llama.n_threads_batch};" in line
