"""The CLI end to end with the echo plugin engine: batch, printing, config check, engines, start-up."""

import json
import subprocess
import sys

from tests.conftest import ROOT, run_cli

HEAVY = ("torch", "transformers", "vllm", "llama_cpp", "boto3", "botocore", "google", "ray", "peft", "opentelemetry")


def test_batch_job_and_exit_code_for_failed_rows(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("engine: ECHO\nmodel:\n  model_name: echo\n")
    src = tmp_path / "in.jsonl"
    src.write_text(
        "".join(json.dumps({"messages": [{"role": "user", "content": t}]}) + "\n" for t in ["a", "FAIL", "b"])
    )
    out = tmp_path / "out.jsonl"
    res = run_cli("infer", "-c", str(cfg), "--input_path", str(src), "--output_path", str(out))
    assert res.returncode == 3, res.stderr
    assert "1 failed" in res.stderr and "out.jsonl.errors.jsonl" in res.stderr
    assert [json.loads(x)["messages"][-1]["content"] for x in out.read_text().splitlines()] == ["echo: a", "echo: b"]


def test_without_output_path_results_print_readably(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("engine: ECHO\nmodel:\n  model_name: echo\n")
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"messages": [{"role": "user", "content": "hello there"}]}) + "\n")
    res = run_cli("infer", "-c", str(cfg), "--input_path", str(src))
    assert res.returncode == 0, res.stderr
    assert "user: hello there" in res.stdout and "assistant: echo: hello there" in res.stdout


def test_dotted_overrides_reach_the_engine(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("engine: ECHO\nmodel:\n  model_name: echo\n")
    res = run_cli("config", "check", "-c", str(cfg), "--model.model_kwargs.concurrency", "7", "--generation.seed=3")
    assert res.returncode == 0, res.stderr
    assert "concurrency: 7" in res.stdout and "seed: 3" in res.stdout


def test_config_check_reports_unsupported_params(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("engine: ECHO\nmodel:\n  model_name: echo\ngeneration:\n  num_beams: 4\n")
    res = run_cli("config", "check", "-c", str(cfg))
    assert res.returncode == 0
    assert "EchoEngine does not support generation.num_beams=4" in res.stderr
    res = run_cli("config", "check", "-c", str(cfg), "--strict", "true")
    assert res.returncode == 2 and "does not support" in res.stderr


def test_config_check_masks_api_key(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "engine: REMOTE\nmodel:\n  model_name: m\nremote_params:\n  api_url: http://x\n  api_key: sk-abc123\n"
    )
    res = run_cli("config", "check", "-c", str(cfg))
    assert "sk-abc123" not in res.stdout + res.stderr
    assert "api_key: '***'" in res.stdout


def test_config_check_accepts_every_example():
    for path in sorted((ROOT / "configs" / "examples").glob("*.yaml")):
        res = run_cli("config", "check", "-c", str(path))
        assert res.returncode == 0, (path, res.stderr)


def test_engines_lists_all_sixteen():
    res = run_cli("engines")
    assert res.returncode == 0, res.stderr
    for name in ("NATIVE", "VLLM", "LLAMACPP", "REMOTE", "ANTHROPIC", "BEDROCK", "GOOGLE_VERTEX", "ECHO"):
        assert name in res.stdout
    assert "tools" in res.stdout  # the tool-calling column


def test_help_and_import_do_not_load_heavy_libraries():
    for code in ("import infermux", "import infermux.cli.main", "import infermux.configs, infermux.types"):
        res = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True)
        loaded = {line.split("|")[-1].strip().split(".")[0] for line in res.stderr.splitlines() if "|" in line}
        assert not loaded & set(HEAVY), (code, loaded & set(HEAVY))
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "infermux", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert res.returncode == 0 and "infer" in res.stdout
    loaded = {line.split("|")[-1].strip().split(".")[0] for line in res.stderr.splitlines() if "|" in line}
    assert not loaded & set(HEAVY)


def test_engines_listing_loads_no_ml_library():
    """`infermux engines` reads each engine's declared capabilities: importing an engine class must not
    import its library (the NATIVE engine once pulled in torch and transformers through a helper)."""
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "infermux", "engines"], capture_output=True, text=True, cwd=ROOT
    )
    assert res.returncode == 0 and "NATIVE" in res.stdout, res.stderr[-2000:]
    names = {line.split("|")[-1].strip() for line in res.stderr.splitlines() if "|" in line}
    # ``google`` alone is the namespace package that looking for google-auth imports; nothing under it may load.
    heavy = {n for n in names if n.split(".")[0] in HEAVY and n != "google"}
    assert not heavy, sorted(heavy)[:10]


# ---------------------------------------------------------------------------- chat preset (no config)
def _piped_params(*args: str) -> str:
    remote = ["--engine", "REMOTE", "--remote_params.api_url", "http://127.0.0.1:9", "--model.model_name", "m"]
    done = run_cli("chat", *remote, *args, input="/params\n")
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_chat_without_config_uses_the_chat_preset_and_overrides_win() -> None:
    shown = _piped_params()
    assert "temperature=0.7  top_p=0.9" in shown and "frequency_penalty=0.3" in shown and "chat preset" in shown
    shown = _piped_params("--generation.temperature", "0")
    assert "temperature=0.0  top_p=0.9" in shown and "frequency_penalty=0.3" in shown


def test_chat_with_a_config_keeps_the_spec_defaults(tmp_path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  model_name: m\n")
    shown = _piped_params("-c", str(config))
    assert "temperature=0.0  top_p=1.0" in shown and "frequency_penalty" not in shown and "chat preset" not in shown


# ---------------------------------------------------------------------------- config check agrees with infer
def test_config_check_shows_what_infer_uses_and_refuses_what_infer_refuses(tmp_path) -> None:
    no_url = tmp_path / "remote.yaml"
    no_url.write_text("engine: REMOTE\nmodel:\n  model_name: m\nremote_params:\n  max_retries: 2\n")
    data = tmp_path / "in.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    check = run_cli("config", "check", "-c", str(no_url))
    infer = run_cli("infer", "-c", str(no_url), "--input_path", str(data), "--output_path", str(tmp_path / "o.jsonl"))
    assert check.returncode == infer.returncode == 2, (check.stderr, infer.stderr)
    message = "error: REMOTE needs remote_params.api_url"
    assert check.stderr.startswith(message) and infer.stderr.startswith(message), (check.stderr, infer.stderr)

    with_url = run_cli("config", "check", "-c", str(no_url), "--remote_params.api_url", "http://127.0.0.1:9/v1")
    assert with_url.returncode == 0, with_url.stderr
    assert "  num_workers: 8\n" in with_url.stdout  # REMOTE's own default, as a job runs it
    set_here = run_cli("config", "check", "-c", str(no_url), "--remote_params.api_url", "http://x:9",
                       "--remote_params.num_workers", "3")  # fmt: skip
    assert "  num_workers: 3\n" in set_here.stdout
