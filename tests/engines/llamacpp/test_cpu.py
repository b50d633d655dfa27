"""The AMX guard (engines/llamacpp/cpu.py): when llama.cpp loads with extra buffer types off, and that the
default engine's first answer neither crashes nor hangs on this machine (in a child, with a time limit)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from infermux.engines.llamacpp.cpu import amx_crash_risk, cpu_flags, parse_system_info
from tests.conftest import ROOT

# llama_print_system_info() of llama-cpp-python 0.3.36, native builds on two machines of this project.
ZEN4 = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | "
    "AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
)
SAPPHIRE_RAPIDS = ZEN4.replace("AVX512_BF16 = 1 |", "AVX512_BF16 = 1 | AMX_INT8 = 1 |")
AMX_CPU = frozenset({"avx512f", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"})


def test_system_info_is_parsed_per_backend() -> None:
    info = parse_system_info(SAPPHIRE_RAPIDS + "BLAS : ACCELERATE = 1 | ")
    assert info["CPU"]["AMX_INT8"] == "1" and info["CPU"]["REPACK"] == "1"
    assert info["BLAS"] == {"ACCELERATE": "1"}
    assert parse_system_info("") == {}


@pytest.mark.parametrize(
    ("info", "flags", "risk"),
    [
        (SAPPHIRE_RAPIDS, AMX_CPU, True),  # AMX kernels on an AMX CPU: the load that crashes
        (SAPPHIRE_RAPIDS, frozenset({"avx512f"}), False),  # kernels built in, but the CPU cannot run them
        (SAPPHIRE_RAPIDS, frozenset(), True),  # flags unknown (not Linux): the library's word alone
        (ZEN4, AMX_CPU, False),  # a build without AMX kernels (portable, or made on another CPU)
        (ZEN4, frozenset({"avx512f"}), False),
    ],
)
def test_extra_buffer_types_go_off_only_for_amx_kernels_on_an_amx_cpu(
    info: str, flags: frozenset[str], risk: bool
) -> None:
    assert amx_crash_risk(parse_system_info(info), flags) is risk


def test_cpu_flags_read_the_first_processor(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 amx_int8\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(str(cpuinfo)) == {"fpu", "sse2", "avx2", "amx_int8"}
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()


# ------------------------------------------------------------------------------------ the real library


@pytest.mark.slow
def test_model_defaults_set_the_field_for_one_load_and_put_the_library_back() -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    from infermux.engines.llamacpp.cpu import default_use_extra_bufts, model_defaults
    from infermux.models import gguf_path

    original = llama_cpp.llama_cpp.llama_model_default_params
    for wanted in (False, None):
        with model_defaults(use_extra_bufts=wanted) as used:
            llm = llama_cpp.Llama(model_path=str(gguf_path()), n_ctx=256, verbose=False)
        try:
            assert used == (default_use_extra_bufts() if wanted is None else wanted)
            assert llm.model_params.use_extra_bufts is used
        finally:
            llm.close()
        assert llama_cpp.llama_cpp.llama_model_default_params is original
    assert llama_cpp.llama_model_default_params().use_extra_bufts is True  # the library's own default


@pytest.mark.slow
def test_the_engine_loads_as_chosen_and_answers_as_the_library_with_the_same_setting() -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    from infermux.configs import GenerationParams, InferenceConfig, ModelParams
    from infermux.engines.llamacpp.cpu import default_use_extra_bufts, model_defaults
    from infermux.engines.llamacpp.engine import LlamaCppInferenceEngine
    from infermux.engines.llamacpp.settings import llama_kwargs
    from infermux.models import gguf_path
    from infermux.types import Conversation, Message, Role

    question = "What is 2+2?"
    for setting in (None, False):
        kwargs = {"n_ctx": 512} if setting is None else {"n_ctx": 512, "use_extra_bufts": setting}
        model = ModelParams(model_name="smollm2-135m-instruct", model_kwargs=kwargs)
        engine = LlamaCppInferenceEngine(model, generation_params=GenerationParams(max_new_tokens=16))
        try:
            expected = default_use_extra_bufts() if setting is None else setting
            assert engine._llama.model_params.use_extra_bufts is expected
            conv = Conversation(messages=[Message(role=Role.USER, content=question)])
            cfg = InferenceConfig(model=model, generation=GenerationParams(max_new_tokens=16))
            [answer] = engine.infer([conv], cfg)
        finally:
            engine.close()
        with model_defaults(use_extra_bufts=expected):
            raw = llama_cpp.Llama(model_path=str(gguf_path()), **llama_kwargs({"n_ctx": 512}))
        try:
            reply = raw.create_chat_completion([{"role": "user", "content": question}], max_tokens=16, temperature=0)
        finally:
            raw.close()
        assert answer.last_message.text == reply["choices"][0]["message"]["content"]


def test_a_non_boolean_setting_is_refused_before_loading() -> None:
    pytest.importorskip("llama_cpp")
    from infermux.configs import ModelParams
    from infermux.engines.llamacpp.engine import LlamaCppInferenceEngine
    from infermux.errors import ConfigError

    model = ModelParams(model_name="smollm2-135m-instruct", model_kwargs={"use_extra_bufts": "no"})
    with pytest.raises(ConfigError, match=r"use_extra_bufts must be true or false, not 'no'"):
        LlamaCppInferenceEngine(model)


@pytest.mark.slow
def test_the_default_engine_answers_in_a_child_without_crashing_or_hanging() -> None:
    """What ``make test`` runs first: the README's first command in a child process, with a time limit."""
    pytest.importorskip("llama_cpp")
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_first_answer.py"), "--timeout", "240"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok: 4 rows answered" in done.stdout


def test_a_crash_is_named_with_its_likely_cause() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import check_first_answer as check
    finally:
        sys.path.pop(0)
    assert "compiled for a CPU with instructions this one lacks" in check.likely_cause(-4)
    assert "--no-cache-dir" in check.likely_cause(-4)
    assert check.likely_cause(-11).startswith("it was killed by SIGSEGV")


def test_system_info_is_the_librarys_line_parsed() -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    from infermux.engines.llamacpp.cpu import system_info, system_info_text

    assert system_info_text() == llama_cpp.llama_print_system_info().decode().strip()
    assert system_info() == parse_system_info(system_info_text())
    assert "CPU" in system_info()


@pytest.mark.slow
def test_loading_a_model_logs_features_extra_buffer_types_and_threads(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("llama_cpp")
    from infermux.configs import ModelParams
    from infermux.engines.llamacpp.cpu import default_use_extra_bufts, system_info
    from infermux.engines.llamacpp.engine import LlamaCppInferenceEngine

    caplog.set_level(logging.DEBUG, logger="infermux")
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
    assert "flash attention on;" in line  # the engine's default (settings.llama_kwargs)
