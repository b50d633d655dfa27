"""``infermux engines --verbose``: the machine report, run as a user runs it (a child process of the CLI)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import cli_env, run_cli


def _sections(stdout: str) -> dict[str, dict[str, str]]:
    """The report's ``[title]`` sections as label -> value (the table before them is skipped)."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in stdout.splitlines():
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        elif current is not None and line.startswith("  "):
            label, _, value = line.strip().partition(": ")
            current[label] = value.strip()
    return sections


def _model_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    raise AssertionError("no model name in /proc/cpuinfo")


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads /proc/cpuinfo (Linux)")
def test_verbose_report_says_what_this_machine_and_each_library_chose() -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    torch = pytest.importorskip("torch")
    res = run_cli("engines", "--verbose", timeout=600)  # imports vLLM: tens of seconds on 2 cores
    assert res.returncode == 0, res.stderr[-3000:]
    assert "LLAMACPP" in res.stdout  # the table comes first, unchanged
    report = res.stdout[res.stdout.index("[machine]") :]
    assert not set(report) & set("│─┃━╭╰"), "the report is plain text, without the table's box characters"
    sections = _sections(res.stdout)
    assert list(sections) == ["machine", "llama.cpp", "torch", "vLLM"]

    machine = sections["machine"]
    assert machine["cpu"] == _model_name()
    assert machine["cores"].startswith(f"{os.cpu_count()} (os.cpu_count), {len(os.sched_getaffinity(0))} usable")
    flags = Path("/proc/cpuinfo").read_text()
    for flag in ("avx2", "avx512f", "amx_int8"):
        assert (f" {flag} " in machine["cpu flags"] + " ") == (f" {flag}" in flags)
    assert "GiB total" in machine["memory"] and machine["python"].startswith(sys.version.split()[0])

    llama = sections["llama.cpp"]
    assert llama["version"] == f"{llama_cpp.__version__} (llama-cpp-python)"
    assert llama["system info"] == llama_cpp.llama_print_system_info().decode().strip()
    assert llama["extra buffer types"].startswith(("on", "off"))
    cores = os.cpu_count() or 1
    assert llama["threads"].startswith(f"n_threads {max(cores // 2, 1)}, n_threads_batch {cores} ")
    assert llama["OMP_WAIT_POLICY"]

    found = sections["torch"]
    assert found["version"].startswith(torch.__version__)
    assert found["cpu capability"] == torch.backends.cpu.get_cpu_capability()
    assert f"avx512={'yes' if torch.cpu._is_avx512_supported() else 'no'}" in found["cpu (torch.cpu)"]
    assert found["threads"].startswith(f"{torch.get_num_threads()} intra-op")

    vllm = sections["vLLM"]
    if importlib.util.find_spec("vllm") is None:
        assert vllm["status"].startswith("not installed")
    else:
        assert "version" in vllm and vllm["platform"].startswith(("cpu", "cuda"))
        assert vllm["kv cache"]


def test_a_library_missing_failing_or_crashing_is_reported_and_the_rest_still_runs(tmp_path: Path) -> None:
    """Real failures, in every process the command starts: torch blocked in ``sys.modules`` by a
    ``sitecustomize`` (as if not installed); vllm and llama_cpp shadowed on PYTHONPATH by packages whose
    import raises, or kills the process with SIGSEGV as a broken native build does."""
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    (tmp_path / "vllm").mkdir()
    (tmp_path / "vllm" / "__init__.py").write_text("raise RuntimeError('vllm shim: broken build')\n")
    (tmp_path / "llama_cpp").mkdir()
    (tmp_path / "llama_cpp" / "__init__.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    res = run_cli("engines", "--verbose", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    sections = _sections(res.stdout)
    assert list(sections) == ["machine", "llama.cpp", "torch", "vLLM"]
    assert sections["torch"] == {"status": "not installed (import of torch halted; None in sys.modules)"}
    assert sections["vLLM"] == {"status": "failed to import: RuntimeError: vllm shim: broken build"}
    assert sections["llama.cpp"]["status"].startswith("crashed with SIGSEGV while importing or asking the library")
    assert sections["machine"]["cores"].startswith(str(os.cpu_count()))


def test_plain_engines_prints_the_table_alone() -> None:
    """Without --verbose nothing of the report is collected (the import check is in test_cli.py)."""
    res = run_cli("engines")
    assert res.returncode == 0, res.stderr
    assert "LLAMACPP" in res.stdout and "[machine]" not in res.stdout


def test_the_table_shows_each_engines_identity_row() -> None:
    """Kind and batch client come from the registry rows (a plugin's row says only that it is one)."""
    res = run_cli("engines")
    assert res.returncode == 0, res.stderr
    cells = {}
    for line in res.stdout.splitlines():
        parts = [p.strip() for p in line.strip("│ ").split("│")]
        if len(parts) > 4 and parts[0]:
            cells[parts[0]] = parts[2:4]
    assert cells["NATIVE"] == ["local", "-"]
    assert cells["ANTHROPIC"] == ["remote", "anthropic"]
    assert cells["OPENAI"] == ["remote", "openai"] and cells["GOOGLE_GEMINI"] == ["remote", "gemini"]
    assert cells["TOGETHER"] == ["remote", "together"] and cells["FIREWORKS"] == ["remote", "fireworks"]
    assert cells["GOOGLE_VERTEX"] == ["remote", "-"]
    assert cells["ECHO"] == ["plugin", "-"]
