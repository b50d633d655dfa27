"""Answer cache, cost, budget, dry run and progress, through the CLI and the jobs facade, against a
counting OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from infermux.configs import GenerationParams, InferenceConfig, ModelParams, RemoteParams
from infermux.jobs import run_config_job
from infermux.jobs.cost import pricing_for
from tests.conftest import ROOT, cli_env, run_cli
from tests.fakes.counting import CountingChat

MODEL = "gpt-4o-mini"  # known to genai-prices


@pytest.fixture
def server() -> Iterator[CountingChat]:
    with CountingChat() as fake:
        assert isinstance(fake, CountingChat)
        yield fake


def _write_rows(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": t}]}) + "\n" for t in texts))
    return path


def _config(tmp_path: Path, server: CountingChat, engine: str = "OPENAI", model: str = MODEL, **extra: object) -> Path:
    remote = {"api_url": server.url + "/v1", "api_key": "sk-test-0000", "num_workers": 2}
    data = {"model": {"model_name": model}, "engine": engine, "generation": {"max_new_tokens": 8},
            "remote_params": remote, **extra}  # fmt: skip
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(data))  # YAML is a superset of JSON
    return path


def _outputs(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cost_per_row_and_totals_follow_genai_prices(tmp_path: Path, server: CountingChat) -> None:
    inp = _write_rows(tmp_path / "in.jsonl", [f"price row {i}" for i in range(4)])
    out = tmp_path / "out.jsonl"
    proc = run_cli("infer", "-c", str(_config(tmp_path, server)), "--input_path", str(inp), "--output_path", str(out))
    assert proc.returncode == 0, proc.stderr
    from genai_prices import Usage, calc_price

    total = 0.0
    for row in _outputs(out):
        usage = row["metadata"]["usage"]
        expected = calc_price(
            Usage(input_tokens=usage["prompt_tokens"], output_tokens=usage["completion_tokens"]),
            MODEL,
            provider_id="openai",
        ).total_price
        assert row["metadata"]["cost_usd"] == pytest.approx(float(expected), rel=1e-6)
        total += float(expected)
    assert f"cost: ${total:.4f}" in proc.stderr


def test_unknown_model_cost_is_unknown_and_a_budget_is_refused(tmp_path: Path, server: CountingChat) -> None:
    inp = _write_rows(tmp_path / "in.jsonl", ["a", "b"])
    config = _config(tmp_path, server, model="no-such-model-xyz")
    out = tmp_path / "out.jsonl"
    proc = run_cli("infer", "-c", str(config), "--input_path", str(inp), "--output_path", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "cost unknown (no price for this model)" in proc.stderr
    assert all("cost_usd" not in row["metadata"] for row in _outputs(out))
    refused = run_cli("infer", "-c", str(config), "--input_path", str(inp), "--max-cost", "1")
    assert refused.returncode == 2 and "max_cost" in refused.stderr and "Traceback" not in refused.stderr


def test_cache_reruns_only_the_edited_row(tmp_path: Path, server: CountingChat) -> None:
    texts = [f"cache row {i}" for i in range(5)]
    config = InferenceConfig(
        model=ModelParams(model_name="stub"),
        engine="REMOTE",
        generation=GenerationParams(max_new_tokens=8),
        remote_params=RemoteParams(api_url=server.url + "/v1"),
        input_path=str(_write_rows(tmp_path / "a.jsonl", texts)),
        output_path=str(tmp_path / "a.out.jsonl"),
    )
    first = asyncio.run(run_config_job(config))
    assert first.done == 5 and first.cached == 0 and len(server.seen) == 5
    texts[2] = "cache row 2, edited"
    config.input_path = str(_write_rows(tmp_path / "b.jsonl", texts))
    config.output_path = str(tmp_path / "b.out.jsonl")
    second = asyncio.run(run_config_job(config))
    assert [s.text for s in server.seen[5:]] == ["cache row 2, edited"]  # exactly one request
    assert second.done == 5 and second.cached == 4
    rows = _outputs(tmp_path / "b.out.jsonl")
    assert [r["messages"][-1]["content"] for r in rows] == [f"echo {t}" for t in texts]
    assert [bool(r["metadata"].get("cached")) for r in rows] == [True, True, False, True, True]
    # sampling without a seed is never cached; --no-cache (cache: false) neither
    config.output_path = str(tmp_path / "c.out.jsonl")
    config.generation = GenerationParams(max_new_tokens=8, temperature=0.7)
    asyncio.run(run_config_job(config))
    config.generation = GenerationParams(max_new_tokens=8)
    config.cache = False
    config.output_path = str(tmp_path / "d.out.jsonl")
    asyncio.run(run_config_job(config))
    assert len(server.seen) == 6 + 5 + 5


def test_concurrent_jobs_share_the_cache(tmp_path: Path, server: CountingChat) -> None:
    server.latency_s = 0.02
    inp = _write_rows(tmp_path / "in.jsonl", [f"shared {i}" for i in range(40)])
    config = _config(tmp_path, server, engine="REMOTE", model="stub")
    env = cli_env(INFERMUX_CACHE_DIR=str(tmp_path / "shared-cache"))

    def start(i: int) -> subprocess.Popen[str]:
        cmd = [sys.executable, "-m", "infermux", "infer", "-c", str(config), "--input_path", str(inp),
               "--output_path", str(tmp_path / f"out{i}.jsonl")]  # fmt: skip
        return subprocess.Popen(cmd, env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    procs = [start(0), start(1)]
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    first, second = (_outputs(tmp_path / f"out{i}.jsonl") for i in range(2))
    assert [r["messages"] for r in first] == [r["messages"] for r in second]
    sent = len(server.seen)
    assert 40 <= sent <= 80
    third = run_cli("infer", "-c", str(config), "--input_path", str(inp), "--output_path",
                    str(tmp_path / "out3.jsonl"), env=env)  # fmt: skip
    assert third.returncode == 0, third.stderr
    assert len(server.seen) == sent  # every row answered from the shared cache
    assert "40 of them from the answer cache" in third.stderr


def test_max_cost_stops_starting_rows_and_resumes(tmp_path: Path, server: CountingChat) -> None:
    texts = [f"budget row {i:02d} " + "word " * 30 for i in range(30)]
    inp = _write_rows(tmp_path / "in.jsonl", texts)
    out = tmp_path / "out.jsonl"
    pricing = pricing_for("OPENAI", MODEL)
    assert pricing is not None
    per_row = pricing.estimate(45, 8) or 0.0
    budget = per_row * 10.5  # about ten rows
    args = ["infer", "-c", str(_config(tmp_path, server)), "--input_path", str(inp), "--output_path", str(out)]
    stopped = run_cli(*args, "--max-cost", f"{budget:.10f}")
    assert stopped.returncode == 4, stopped.stderr
    assert "--max-cost reached" in stopped.stderr
    sent = len(server.seen)
    assert 1 <= sent < 30
    assert len(_outputs(out)) == sent  # the finished rows, as after failed rows; the partial file stays
    spent = sum(
        json.loads(line)["conversation"]["metadata"]["cost_usd"]
        for line in out.with_name(out.name + ".partial.jsonl").read_text().splitlines()
    )
    assert spent <= budget
    finished = run_cli(*args, "--max-cost", "10")
    assert finished.returncode == 0, finished.stderr
    assert len(server.seen) == 30  # each row sent exactly once over the two runs
    assert sorted(s.text for s in server.seen) == sorted(texts)
    assert [r["messages"][0]["content"] for r in _outputs(out)] == texts


def test_dry_run_sends_nothing_and_prices_online_and_batch(tmp_path: Path, server: CountingChat) -> None:
    inp = _write_rows(tmp_path / "in.jsonl", ["x" * 400] * 3)
    config = _config(tmp_path, server, remote_params={"api_url": server.url + "/v1", "api_key": "sk-test-0000",
                                                      "requests_per_minute": 2})  # fmt: skip
    proc = run_cli("infer", "-c", str(config), "--input_path", str(inp), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert server.seen == []
    pricing = pricing_for("OPENAI", MODEL)
    assert pricing is not None
    assert "rows: 3 (0 already done, 0 in the answer cache, 3 to send)" in proc.stdout
    assert "estimated input tokens: 300" in proc.stdout
    assert f"estimated cost online: ${pricing.estimate(300, 24):.4f}" in proc.stdout
    assert f"through the batch API: ${pricing.estimate(300, 24, batch=True):.4f}" in proc.stdout
    assert "at least 1.5 min" in proc.stdout


def test_progress_lines_when_stderr_is_a_file_and_progress_json(tmp_path: Path, server: CountingChat) -> None:
    server.latency_s = 0.05
    inp = _write_rows(tmp_path / "in.jsonl", [f"progress {i}" for i in range(30)])
    progress_json = tmp_path / "dash" / "progress.json"
    config = _config(tmp_path, server, progress_path=str(progress_json), progress_interval_s=0.3,
                     remote_params={"api_url": server.url + "/v1", "api_key": "sk-test-0000", "num_workers": 1})  # fmt: skip
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.run(
            [sys.executable, "-m", "infermux", "infer", "-c", str(config), "--input_path", str(inp),
             "--output_path", str(tmp_path / "out.jsonl")],
            env=cli_env(), cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=err, timeout=180,
        )  # fmt: skip
    text = err_path.read_text()
    assert proc.returncode == 0, text
    lines = [line for line in text.splitlines() if line.startswith("progress ")]
    assert len(lines) >= 2, text
    assert lines[-1].startswith("progress 30/30 (100%)") and "$" in lines[-1] and "failed 0" in lines[-1]
    assert "\x1b[" not in text  # no terminal control codes in a log file
    snap = json.loads(progress_json.read_text())
    assert snap["state"] == "done" and snap["finished"] == 30 and snap["cost_usd"] > 0
    assert not [p for p in os.listdir(progress_json.parent) if p != "progress.json"]  # no temp files left


def test_dry_run_of_a_local_engine_loads_no_model(tmp_path: Path) -> None:
    """No model: LLAMACPP reads the GGUF's vocabulary only (to count tokens as the job will); no torch or
    transformers. No cloud-only lines (prices, batch API, per-minute limits) on a local engine."""
    inp = _write_rows(tmp_path / "in.jsonl", ["hello there"] * 4)
    script = (
        "import sys\nfrom infermux.cli.main import app\n"
        f"sys.argv = ['infermux', 'infer', '--input_path', {str(inp)!r}, '--dry-run', '--engine', 'LLAMACPP']\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        "print('loaded:', sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=cli_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "rows: 4 (0 already done, 0 in the answer cache, 4 to send)" in proc.stdout
    for cloud in ("cost", "batch API", "per-minute limits"):
        assert cloud not in proc.stdout, proc.stdout
    assert "time: unknown until a job of this model has run on LLAMACPP here" in proc.stdout
    assert "loaded: []" in proc.stdout
    assert proc.stderr == ""


def test_the_summary_counts_answers_cut_off_at_the_token_limit(tmp_path: Path) -> None:
    """The fake stops at max_tokens words with finish_reason "length", as a server does."""
    from tests.fakes.openai_chat import FakeOpenAIChat

    inp = _write_rows(tmp_path / "in.jsonl", ["one", "two", "three"])
    with FakeOpenAIChat() as fake:
        assert isinstance(fake, FakeOpenAIChat)
        proc = run_cli(
            "infer", "--engine", "REMOTE", "--model.model_name", "m", "--remote_params.api_url", fake.url + "/v1",
            "--input_path", str(inp), "--output_path", str(tmp_path / "out.jsonl"), "--generation.max_new_tokens", "2",
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "3 answered of 3 rows" in proc.stderr
    assert '3 answers stopped at max_new_tokens=2 (finish_reason "length"): raise --generation.max_new_tokens' in (
        proc.stderr
    )
    # The default model decoding greedily without a repetition guard mostly loops: the advice says so first.
    with FakeOpenAIChat() as fake:
        proc = run_cli(
            "infer", "--engine", "REMOTE", "--model.model_name", "smollm2-135m-instruct", "--input_path", str(inp),
            "--remote_params.api_url", fake.url + "/v1", "--output_path", str(tmp_path / "out2.jsonl"),
            "--generation.max_new_tokens", "2",
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (
        "repeat a phrase (greedy decoding without a repetition guard), add --generation.frequency_penalty 0.3; "
        "if they were cut mid-answer, raise --generation.max_new_tokens" in proc.stderr.replace("\n", " ")
    )


@pytest.mark.slow
def test_dry_run_counts_the_chat_template_on_native_as_on_llamacpp() -> None:
    """The same model through its GGUF (LLAMACPP) and its tokenizer (NATIVE): the same prompt tokens, the
    count tests/test_doc_examples.py checks against a real job's usage."""
    pytest.importorskip("transformers")
    pytest.importorskip("llama_cpp")
    counts = []
    for engine in ("LLAMACPP", "NATIVE"):
        proc = run_cli("infer", "--engine", engine, "--input_path", "configs/examples/conversations.jsonl", "--dry-run")
        assert proc.returncode == 0, proc.stderr
        counts.append(proc.stdout.split("input tokens: ")[1].split(" ")[0])
        assert "(with the chat template, as the job will send them)" in proc.stdout
    assert counts[0] == counts[1] and int(counts[0]) > 4 * 20, counts  # the template's system prompt included
