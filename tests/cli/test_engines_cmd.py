"""``infermux engines --verbose``: the machine report, run as a user runs it (a child process of the CLI)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, cli_env, run_cli


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


def test_the_json_shows_each_engines_identity_row() -> None:
    """Kind and batch client come from the registry rows (a plugin's row says only that it is one)."""
    import json

    res = run_cli("engines", "--json")
    assert res.returncode == 0, res.stderr
    rows = {f["engine"]: (f["kind"], f["batch_client"], f["plugin"]) for f in json.loads(res.stdout)}
    assert rows["NATIVE"] == ("local", None, False)
    assert rows["ANTHROPIC"] == ("remote", "anthropic", False)
    assert rows["OPENAI"] == ("remote", "openai", False) and rows["GOOGLE_GEMINI"] == ("remote", "gemini", False)
    assert rows["TOGETHER"] == ("remote", "together", False) and rows["FIREWORKS"] == ("remote", "fireworks", False)
    assert rows["GOOGLE_VERTEX"] == ("remote", "vertex", False) and rows["BEDROCK"] == ("remote", "bedrock", False)
    assert rows["LLAMACPP"] == ("local", None, False)
    assert rows["ECHO"][2] is True


def test_the_table_fits_an_80_column_terminal() -> None:
    """Run in a pty of 80 columns, as a person at a small terminal would, and read the screen: one line
    per engine, the header on one line, nothing wrapped."""
    import pexpect
    import pyte

    child = pexpect.spawn(
        sys.executable, ["-m", "infermux", "engines"], env=cli_env(TERM="xterm"), cwd=str(ROOT),
        encoding="utf-8", dimensions=(60, 80), timeout=120,
    )  # fmt: skip
    out = child.read()
    child.close()
    assert child.exitstatus == 0, out
    screen = pyte.Screen(80, 60)
    pyte.Stream(screen).feed(out.replace("\n", "\r\n"))
    lines = [line.rstrip() for line in screen.display if line.strip()]
    assert lines[0].split() == ["engine", "installed", "stream", "images", "tools", "lora", "guided"]
    names = [line.split()[0] for line in lines[1:] if line.split()[0].isupper()]
    assert {"NATIVE", "LLAMACPP", "VLLM", "REMOTE", "HUGGING_FACE_ROUTER", "ECHO"} <= set(names)
    assert len(lines) < 35, "one line per engine, not a wrapped cell per line"
    assert all(len(line) <= 80 for line in out.splitlines())
    assert not set(out) & set("│─┃━╭╰┏┗"), "plain text, no box characters"
    llamacpp = next(line for line in lines if line.startswith("LLAMACPP "))
    assert llamacpp.split() == ["LLAMACPP", "yes", "yes", "yes", "yes", "no", "choice,json,regex"]


def test_one_engine_in_detail_and_json_for_scripts() -> None:
    import json

    res = run_cli("engines", "llamacpp")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "LLAMACPP · installed: yes" and all(len(line) <= 80 for line in lines)
    assert any(line.startswith("- Generation parameters: frequency_penalty") for line in lines)
    assert "Example config: configs/examples/smollm2_llamacpp.yaml" in res.stdout and "`" not in res.stdout

    res = run_cli("engines", "--json")
    facts = {fact["engine"]: fact for fact in json.loads(res.stdout)}
    assert facts["LLAMACPP"]["installed"] is True and facts["LLAMACPP"]["extra"] == "llamacpp"
    assert "temperature" in facts["LLAMACPP"]["capabilities"]["generation_params"]
    assert facts["ECHO"]["kind"] == "local"
    one = json.loads(run_cli("engines", "GEMINI", "--json").stdout)  # an alias names its engine
    assert one["engine"] == "GOOGLE_GEMINI" and one["capabilities"]["tools"] is True

    res = run_cli("engines", "vlm")
    assert res.returncode == 2 and "unknown engine 'vlm'. Did you mean VLLM?" in res.stderr
