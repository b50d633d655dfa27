"""`infermux batch submit|status|fetch` end to end, in a subprocess, against the OpenAI Batch fake."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from infermux.jobs.rows import iter_rows
from tests.conftest import cli_env, run_cli
from tests.fakes import FakeOpenAIBatch

KEY = "sk-cli-test"


@pytest.fixture
def fake() -> Iterator[FakeOpenAIBatch]:
    with FakeOpenAIBatch(api_key=KEY, advance_on_poll=True) as server:
        yield server


@pytest.fixture
def job(tmp_path: Path, fake: FakeOpenAIBatch) -> tuple[Path, Path, Path]:
    config = tmp_path / "batch.yaml"
    config.write_text(
        "model:\n  model_name: gpt-4o-mini\nengine: OPENAI\ngeneration:\n  max_new_tokens: 16\n"
        f"remote_params:\n  api_url: {fake.url}/v1\n  api_key_env_varname: TEST_BATCH_KEY\n  max_retries: 1\n"
    )
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"}]}) + "\n" for i in range(4)))
    return config, inp, tmp_path / "out.jsonl"


def batch(*args: str) -> tuple[int, str]:
    proc = run_cli("batch", *args, env=cli_env(TEST_BATCH_KEY=KEY), timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def test_submit_status_fetch_and_rerun_failed_rows(fake: FakeOpenAIBatch, job: tuple[Path, Path, Path]) -> None:
    config, inp, out = job
    ids = [r.row_id for r in iter_rows(inp)]
    fake.fail_custom_ids = {ids[2]}
    common = ["-c", str(config), "--output_path", str(out)]

    code, text = batch("submit", *common, "--input_path", str(inp))
    assert code == 0, text
    batch_id = next(iter(fake.batches))
    assert batch_id in text and out.with_name("out.jsonl.batch.json").exists()
    code, text = batch("submit", *common, "--input_path", str(inp))  # a rerun resubmits nothing
    assert code == 0 and len(fake.batches) == 1 and len(fake.files) == 1

    for _ in range(3):
        code, text = batch("status", *common)
        assert code == 0, text
    assert "completed" in text and "all batches finished" in text

    code, text = batch("fetch", *common, "--input_path", str(inp))
    assert code == 3, text
    assert "3 rows done, 1 failed" in text and Path(f"{out}.errors.jsonl").exists()

    fake.fail_custom_ids.clear()
    code, text = batch("fetch", *common, "--input_path", str(inp), "--rerun-failed")
    assert code == 0, text
    online = [r.json["messages"][0]["content"] for r in fake.requests if r.path == "/v1/chat/completions"]
    assert online == ["q2"]
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["messages"][-1]["content"].split("last=")[1] for a in answers] == ["q0", "q1", "q2", "q3"]


def test_submit_suggests_a_status_command_that_keeps_the_overrides(
    fake: FakeOpenAIBatch, job: tuple[Path, Path, Path]
) -> None:
    """A URL given on the command line must reach the suggested `status` too, or it would ask api.openai.com."""
    config, inp, out = job
    config.write_text(config.read_text().replace(f"  api_url: {fake.url}/v1\n", ""))
    url = ["--remote_params.api_url", f"{fake.url}/v1"]
    code, text = batch("submit", "-c", str(config), "--input_path", str(inp), "--output_path", str(out), *url)
    assert code == 0, text
    line = next(x for x in text.splitlines() if x.startswith("check with: "))
    suggested = shlex.split(line.removeprefix("check with: "))
    assert suggested[:3] == ["infermux", "batch", "status"] and suggested[-2:] == url, line
    code, text = batch(*suggested[2:])
    assert code == 0 and "batch record" in text, text


def test_engines_without_a_batch_api_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "cerebras.yaml"  # (ANTHROPIC has Message Batches since issue 15, GOOGLE_GEMINI since 27)
    config.write_text(
        "model:\n  model_name: llama-x\nengine: CEREBRAS\nremote_params:\n  api_url: http://127.0.0.1:9\n"
    )
    code, text = batch("status", "-c", str(config), "--output_path", str(tmp_path / "o.jsonl"))
    assert code == 2 and "does not support the Batch API" in text and "Traceback" not in text
    from infermux.engines.registry import ENGINES

    with_batch = [name for name, spec in ENGINES.items() if spec.batch]  # the message is made from the rows
    assert all(name in text for name in with_batch) and "LLAMACPP" not in text, text


def test_missing_record_is_a_clear_error(job: tuple[Path, Path, Path]) -> None:
    config, _inp, out = job
    code, text = batch("status", "-c", str(config), "--output_path", str(out))
    assert code == 2 and "infermux batch submit" in text and "Traceback" not in text
