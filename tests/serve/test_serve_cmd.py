"""The ``serve`` command's checks before anything is loaded or bound."""

from __future__ import annotations

import subprocess
import sys

import pytest

from infermux.cli.serve_cmd import is_loopback
from tests.conftest import ROOT, cli_env, run_cli


def test_help_is_light_and_names_the_options() -> None:
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "infermux", "serve", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=cli_env(),
    )
    assert res.returncode == 0
    for option in ("--host", "--port", "--api-key", "INFERMUX_API_KEY"):
        assert option in res.stdout
    modules = {line.split("|")[-1].strip() for line in res.stderr.splitlines() if "|" in line}
    assert not {m for m in modules if m.startswith(("aiohttp", "infermux.serve", "llama_cpp", "torch"))}


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "example.com"])
def test_non_loopback_host_without_a_key_is_refused(host: str) -> None:
    env = cli_env()
    env.pop("INFERMUX_API_KEY", None)
    res = run_cli("serve", "--host", host, "--port", "0", env=env)
    assert res.returncode == 2
    assert "without an API key" in res.stderr and "--api-key" in res.stderr and "INFERMUX_API_KEY" in res.stderr
    assert "Traceback" not in res.stderr


def test_short_key_and_bad_port_are_refused() -> None:
    res = run_cli("serve", "--api-key", "abc")
    assert res.returncode == 2 and "at least 8" in res.stderr
    res = run_cli("serve", "--port", "70000")
    assert res.returncode == 2 and "not a TCP port" in res.stderr


def test_bad_config_is_a_user_error(tmp_path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("model:\n  model_nam: x\n")
    res = run_cli("serve", "-c", str(bad))
    assert res.returncode == 2 and "model_nam" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.9", True), ("localhost", True), ("::1", True), ("[::1]", True),
     ("0.0.0.0", False), ("10.0.0.1", False), ("myhost", False)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_the_default_model_greedy_without_a_guard_is_warned_about_and_no_config_gets_the_preset(tmp_path) -> None:
    """On the ECHO engine (no model to load) under the default model's name: a config keeps its greedy
    SPEC defaults, with a warning; without a config, requests that choose no sampling get the preset."""
    import json
    import urllib.request

    from tests.serve.running import serve

    config = tmp_path / "greedy.yaml"
    config.write_text("engine: ECHO\nmodel:\n  model_name: smollm2-135m-instruct\n")
    with serve("-c", str(config), timeout=120) as served:
        with urllib.request.urlopen(served.url + "/health", timeout=30) as resp:
            assert json.loads(resp.read())["sampling"]["temperature"] == 0.0
        assert "warning: smollm2-135m-instruct decodes greedily" in served.log()
        assert "no config given" not in served.log()
    guarded = tmp_path / "guarded.yaml"
    guarded.write_text(config.read_text() + "generation:\n  frequency_penalty: 0.3\n")
    with serve("-c", str(guarded), timeout=120) as served:
        assert "decodes greedily" not in served.log()
    with serve("--engine", "ECHO", timeout=120) as served:
        with urllib.request.urlopen(served.url + "/health", timeout=30) as resp:
            assert json.loads(resp.read())["sampling"]["temperature"] == 0.7  # ECHO takes temperature only
        assert "no config given: requests that set no temperature, top_p or penalty get temperature=0.7" in (
            served.log()
        )
