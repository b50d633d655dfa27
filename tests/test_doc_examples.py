"""Commands from README.md and docs/, run exactly as written (``infermux`` is ``python -m infermux``), in a
folder where ``configs/`` is the repository's: what a new user copies must work, and say what it does.

The quick start runs in a pseudo-terminal, as a person runs it: the screen shows what is being loaded
before the progress bar, and a summary at the end.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, cli_env

pytestmark = pytest.mark.slow


def doc_command(doc: str, starts: str) -> list[str]:
    """The command in ``doc``'s ```bash blocks that begins with ``starts`` (continuation lines joined,
    comments dropped), as argv with ``infermux`` run by this Python."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            if line.startswith(starts):
                argv = shlex.split(line, comments=True)
                assert argv[0] == "infermux"
                return [sys.executable, "-m", "infermux", *argv[1:]]
    raise AssertionError(f"no command starting {starts!r} in {doc}")


def user_folder(tmp_path: Path) -> Path:
    """A folder as a user's checkout has it: configs/ there, nothing else."""
    (tmp_path / "configs").symlink_to(ROOT / "configs", target_is_directory=True)
    return tmp_path


def test_the_tools_guide_forced_call_example_calls_a_tool_on_every_row(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    folder = user_folder(tmp_path)
    argv = doc_command("docs/tools.md", "infermux infer --engine LLAMACPP")
    assert "configs/examples/tools.json" in argv and "configs/examples/questions.jsonl" in argv
    env = cli_env(PYTHONPATH=os.pathsep.join([str(ROOT / "src"), cli_env()["PYTHONPATH"]]))
    done = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (folder / "out" / "calls.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    names = {"get_weather", "get_time"}
    for row in rows:
        answer = row["messages"][-1]
        assert answer["role"] == "assistant" and len(answer["tool_calls"]) == 1, answer
        call = answer["tool_calls"][0]["function"]
        assert call["name"] in names and isinstance(json.loads(call["arguments"])["city"], str)
        assert row["metadata"]["finish_reason"] == "tool_calls"
    assert "4 answered of 4 rows" in done.stderr and "stopped at max_new_tokens" not in done.stderr


def test_the_readme_quick_start_in_a_terminal(tmp_path: Path) -> None:
    """The quick start's batch job, in a pty: it says what it loads (before the bar), has no greedy-loop
    warning (it sets the repetition guard), no answer cut at the token limit, and ends with a summary; a
    dry run afterwards counts the input tokens the job sent and estimates the time from the job's speed,
    without cloud-only lines."""
    pytest.importorskip("llama_cpp")
    pexpect = pytest.importorskip("pexpect")
    pyte = pytest.importorskip("pyte")
    folder = user_folder(tmp_path)
    argv = doc_command("README.md", "infermux infer --input_path")
    env = cli_env(TERM="xterm", PYTHONPATH=os.pathsep.join([str(ROOT / "src"), cli_env()["PYTHONPATH"]]))
    child = pexpect.spawn(argv[0], argv[1:], cwd=str(folder), env=env, encoding="utf-8", dimensions=(40, 100),
                          timeout=600)  # fmt: skip
    out = child.read()
    child.close()
    assert child.exitstatus == 0, out[-3000:]
    screen = pyte.Screen(100, 40)
    pyte.Stream(screen).feed(out)
    lines = [line.rstrip() for line in screen.display if line.strip()]
    loading = next(i for i, line in enumerate(lines) if line.startswith("loading smollm2-135m-instruct on LLAMACPP"))
    bar = next(i for i, line in enumerate(lines) if line.startswith("infer "))
    assert loading < bar, lines
    assert any(line.startswith("loaded in ") for line in lines)
    assert "--generation.frequency_penalty" in argv and not any("decodes greedily" in line for line in lines), lines
    assert not any("stopped at max_new_tokens" in line for line in lines), lines
    summary = next(line for line in lines if "answered of 4 rows" in line)
    assert summary.startswith("4 answered") and "out/answers.jsonl" in summary
    assert not any("cost" in line for line in lines), "a local job has no cost to speak of"
    tokens_in = int(re.search(r"tokens: (\d+) in", "\n".join(lines)).group(1))  # type: ignore[union-attr]

    at = argv.index("--output_path")
    dry = [*argv[:at], *argv[at + 2 :], "--dry-run", "--no-cache"]  # the same job, planned: nothing cached is done
    planned = subprocess.run(dry, cwd=folder, env=env, capture_output=True, text=True, timeout=120)
    assert planned.returncode == 0, planned.stderr
    assert f"input tokens: {tokens_in} (with the chat template" in planned.stdout, (tokens_in, planned.stdout)
    assert re.search(r"time: about \S+ at \d+\.\d\d rows/s", planned.stdout), planned.stdout
    assert "cost" not in planned.stdout and "batch API" not in planned.stdout
