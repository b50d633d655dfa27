"""`infermux infer` on provider engines, end to end in a subprocess against their fakes."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import cli_env, run_cli
from tests.fakes import FakeGemini


def test_gemini_job_and_a_wrong_key(tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    rows = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "one"}]},
        {"messages": [{"role": "user", "content": "two"}, {"role": "assistant", "content": "2"}, {"role": "user", "content": "three"}]},
    ]  # fmt: skip
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    with FakeGemini(api_key="good-key") as fake:
        config = tmp_path / "gemini.yaml"
        config.write_text(
            f"model:\n  model_name: gemini-2.0-flash\nengine: GOOGLE_GEMINI\nremote_params:\n  api_url: {fake.url}\n"
        )
        args = ["infer", "-c", str(config), "--input_path", str(inp), "--output_path", str(out)]
        proc = run_cli(*args, env=cli_env(GEMINI_API_KEY="good-key"))
        assert proc.returncode == 0, proc.stderr
        answers = [json.loads(line) for line in out.read_text().splitlines()]
        assert answers[0]["messages"][-1]["content"] == "system=Be brief. | turns=1 | images=0 | last=one"
        assert answers[1]["messages"][-1]["content"] == "system=- | turns=3 | images=0 | last=three"

        out.unlink()
        # --no-cache: the same rows would otherwise come from the answer cache, without a request
        proc = run_cli(*args, "--no-cache", env=cli_env(GEMINI_API_KEY="wrong-key"))
        assert proc.returncode == 3, proc.stderr
        errors = [json.loads(line) for line in Path(f"{out}.errors.jsonl").read_text().splitlines()]
        assert len(errors) == 2 and all("GEMINI_API_KEY" in e["message"] for e in errors)
        assert "wrong-key" not in proc.stdout + proc.stderr + Path(f"{out}.errors.jsonl").read_text()


def test_missing_key_stops_before_any_request(tmp_path: Path) -> None:
    config = tmp_path / "gemini.yaml"
    config.write_text("model:\n  model_name: gemini-2.0-flash\nengine: GOOGLE_GEMINI\n")
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    env = cli_env()
    env.pop("GEMINI_API_KEY", None)
    proc = run_cli("infer", "-c", str(config), "--input_path", str(inp), env=env)
    assert proc.returncode == 2 and "GEMINI_API_KEY" in proc.stderr and "Traceback" not in proc.stderr


def test_openai_quota_exhausted_fails_every_row_at_once_exit_3(tmp_path: Path) -> None:
    import time

    from tests.fakes import QUOTA_BODY, FakeOpenAIChat

    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"}]}) + "\n" for i in range(3)))
    out = tmp_path / "out.jsonl"
    with FakeOpenAIChat(api_key="sk-test") as fake:
        fake.fail_next(429, body=QUOTA_BODY, times=100)
        config = tmp_path / "openai.yaml"
        config.write_text(
            f"model:\n  model_name: gpt-4o-mini\nengine: OPENAI\nremote_params:\n  api_url: {fake.url}/v1\n"
            "  num_workers: 1\n"
        )
        started = time.monotonic()
        proc = run_cli(
            "infer", "-c", str(config), "--input_path", str(inp), "--output_path", str(out),
            env=cli_env(OPENAI_API_KEY="sk-test"),
        )  # fmt: skip
        elapsed = time.monotonic() - started
        assert len(fake.requests) == 3  # one per row, none retried
    assert proc.returncode == 3, proc.stderr
    assert elapsed < 60  # seconds (start-up included, under load); the bug took 5 minutes per row
    errors = [json.loads(line) for line in Path(f"{out}.errors.jsonl").read_text().splitlines()]
    assert len(errors) == 3
    for error in errors:
        assert error["status"] == 429 and error["retryable"] is False
        assert "You exceeded your current quota" in error["message"] and "billing" in error["message"]


def test_a_provider_limit_stops_config_check_and_infer_before_sending(tmp_path: Path) -> None:
    from tests.fakes import FakeOpenAIChat

    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"}]}) + "\n" for i in range(3)))
    with FakeOpenAIChat(api_key="sk-test") as fake:
        for extra, words in (
            ("  stop_strings: [a, b, c, d, e]\n", "generation.stop_strings has 5 entries; OPENAI accepts at most 4"),
            ("  logit_bias: {'50256': -150}\n", "between -100 and 100"),
        ):
            config = tmp_path / "openai.yaml"
            config.write_text(
                f"model:\n  model_name: gpt-4o-mini\nengine: OPENAI\nremote_params:\n  api_url: {fake.url}/v1\n"
                f"generation:\n{extra}"
            )
            env = cli_env(OPENAI_API_KEY="sk-test")
            check = run_cli("config", "check", "-c", str(config), env=env)
            assert check.returncode == 2 and words in check.stderr, check.stderr
            proc = run_cli(
                "infer",
                "-c",
                str(config),
                "--input_path",
                str(inp),
                "--output_path",
                str(tmp_path / "o.jsonl"),
                env=env,
            )
            assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr
        assert fake.requests == []  # nothing was sent
        assert not (tmp_path / "o.jsonl").exists()
