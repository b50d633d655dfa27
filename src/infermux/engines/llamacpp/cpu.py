"""What llama.cpp sees on this CPU, and the one load setting infermux chooses because of it.

**AMX.** A llama.cpp build with AMX kernels (``-march=native`` on a CPU with ``amx_int8``, as
llama-cpp-python compiles by default, or ``GGML_AMX_INT8``) registers an AMX "extra buffer type": at load
it repacks quantized weights into that buffer, and on llama-cpp-python 0.3.36 the first matrix product
then crashes in ``ggml_backend_amx_mul_mat`` (SIGSEGV, any thread count). Upstream reports: llama.cpp
issue #20824 (closed as stale, no fix), ollama issue #17006 (Sapphire Rapids). Loading with the model
parameter ``use_extra_bufts = false`` (``llama_model_params`` in ``llama.h``: "use extra buffer types,
used for weight repacking") keeps the weights in plain CPU buffers and answers correctly.

So infermux loads llama.cpp with extra buffer types off exactly when the library reports AMX kernels
(``AMX_INT8 = 1`` in ``llama_print_system_info``) and the CPU has ``amx_int8`` (``/proc/cpuinfo``).
Elsewhere nothing changes. What it costs on such a CPU: the CPU_REPACK buffer type goes too, so Q4_0 and
IQ4_NL weights lose their repacked GEMM kernels; Q4_1 (the default model) has none on x86 anyway.
``model_kwargs: {use_extra_bufts: true}`` turns them back on for a build known to work.

``Llama(...)`` takes no argument for that field, so :func:`model_defaults` sets it through
``llama_model_default_params``, the function ``Llama.__init__`` reads its defaults from, while one model
loads (the engine, the raw-library baselines in ``benchmarks/``, the ``llama_cpp.server`` tests start).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

__all__ = [
    "amx_crash_risk",
    "cpu_flags",
    "default_use_extra_bufts",
    "load_summary",
    "model_defaults",
    "system_info",
    "system_info_text",
]

_swap_lock = threading.RLock()


@cache
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The instruction-set flags of the first CPU in ``cpuinfo`` (Linux); empty where there is none."""
    try:
        text = Path(cpuinfo).read_text(encoding="ascii", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def system_info() -> dict[str, dict[str, str]]:
    """``llama_print_system_info()`` parsed: backend name -> feature -> value, e.g.
    ``{"CPU": {"AVX2": "1", "AMX_INT8": "1", "REPACK": "1", ...}}``. Features are the ones the loaded
    CPU backend was compiled with (with runtime dispatch, the variant chosen for this CPU)."""
    return parse_system_info(system_info_text())


def system_info_text() -> str:
    """``llama_print_system_info()`` as the library prints it (one line)."""
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()


def parse_system_info(text: str) -> dict[str, dict[str, str]]:
    """Parse ``"CPU : SSE3 = 1 | AVX2 = 1 | ... |"`` (one ``NAME : ...`` group per backend)."""
    backends: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for part in text.split("|"):
        if " : " in part:
            name, _, part = part.partition(" : ")
            current = backends.setdefault(name.strip(), {})
        key, sep, value = part.partition("=")
        if current is not None and sep:
            current[key.strip()] = value.strip()
    return backends


def amx_crash_risk(info: dict[str, dict[str, str]], flags: frozenset[str]) -> bool:
    """True when the library has AMX kernels and this CPU runs them: the load that crashes (module doc).

    ``flags`` empty means the CPU's flags are unknown (not Linux): the library's word is taken alone."""
    has_kernels = any(features.get("AMX_INT8") == "1" for features in info.values())
    return has_kernels and (not flags or "amx_int8" in flags)


def default_use_extra_bufts() -> bool:
    """The ``use_extra_bufts`` infermux loads with on this machine: False only under :func:`amx_crash_risk`."""
    return not amx_crash_risk(system_info(), cpu_flags())


def load_summary(llama: Any, use_extra_bufts: bool) -> str:
    """One line for the log when a model has loaded: the CPU features the library runs with, the extra
    buffer types, the threads and flash attention of ``llama`` (a ``llama_cpp.Llama``) and ``OMP_WAIT_POLICY``."""
    import llama_cpp

    features = " ".join(k for feats in system_info().values() for k, v in feats.items() if v == "1")
    bufts = "on" if use_extra_bufts else "off (AMX crash risk, llama.cpp #20824)"
    return (
        f"llama-cpp-python {llama_cpp.__version__}, {features or 'no CPU features reported'}; "
        f"extra buffer types {bufts}; n_threads {llama.n_threads}, n_threads_batch {llama.n_threads_batch}; "
        f"flash attention {'on' if llama.context_params.flash_attn_type > 0 else 'off'}; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}"
    )


@contextlib.contextmanager
def model_defaults(*, use_extra_bufts: bool | None = None) -> Iterator[bool]:
    """While the block runs, ``llama_cpp.Llama(...)`` loads with ``use_extra_bufts`` (None: this machine's
    :func:`default_use_extra_bufts`); yields the value used. One model loads at a time in the block."""
    import llama_cpp.llama_cpp as lib

    value = default_use_extra_bufts() if use_extra_bufts is None else bool(use_extra_bufts)
    with _swap_lock:
        original = lib.llama_model_default_params

        def defaults() -> Any:
            params = original()
            params.use_extra_bufts = value
            return params

        lib.llama_model_default_params = defaults
        try:
            yield value
        finally:
            lib.llama_model_default_params = original
