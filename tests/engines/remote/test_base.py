"""What every HTTP engine (RemoteEngine subclasses) does before sending anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infermux.configs import ModelParams, RemoteParams
from infermux.engines.registry import engine_class, engine_specs, is_available
from infermux.engines.remote.base import RemoteEngine
from infermux.errors import ConfigError
from tests.conftest import cli_env, run_cli
from tests.servers import stub_server

_HTTP_ENGINES = [
    name
    for name, spec in engine_specs().items()
    if spec.remote and is_available(name) and issubclass(engine_class(name), RemoteEngine)
]


@pytest.mark.parametrize("name", _HTTP_ENGINES)
def test_an_unset_api_key_variable_the_user_named_fails_before_sending(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SOME_UNSET_VAR", raising=False)
    params = RemoteParams(api_url="http://127.0.0.1:9/v1", api_key_env_varname="SOME_UNSET_VAR")
    with pytest.raises(ConfigError, match=r"SOME_UNSET_VAR.*not set"):
        engine_class(name)(ModelParams(model_name="m"), remote_params=params)  # type: ignore[call-arg]
    monkeypatch.setenv("SOME_UNSET_VAR", "")
    with pytest.raises(ConfigError, match=r"SOME_UNSET_VAR.*empty"):
        RemoteParams(api_key_env_varname="SOME_UNSET_VAR").resolve_api_key()
    monkeypatch.setenv("SOME_UNSET_VAR", "sk-from-the-variable")
    assert RemoteParams(api_key_env_varname="SOME_UNSET_VAR").resolve_api_key("OTHER") == "sk-from-the-variable"


@pytest.mark.parametrize("name", _HTTP_ENGINES)
def test_the_unset_key_hint_suggests_going_without_only_where_the_engine_allows_it(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SOME_UNSET_VAR", raising=False)
    cls = engine_class(name)
    params = RemoteParams(api_url="http://127.0.0.1:9/v1", api_key_env_varname="SOME_UNSET_VAR")
    with pytest.raises(ConfigError) as err:
        cls(ModelParams(model_name="m"), remote_params=params)  # type: ignore[call-arg]
    assert ("without a key" in str(err.value)) is (not cls.requires_api_key), str(err.value)


def test_config_check_warns_about_a_missing_key_and_still_passes(tmp_path: Path) -> None:
    env = cli_env()
    for var in ("SOME_UNSET_VAR", "ANTHROPIC_API_KEY"):
        env.pop(var, None)
    named = tmp_path / "named.yaml"
    named.write_text("model:\n  model_name: m\nengine: OPENAI\nremote_params:\n  api_key_env_varname: SOME_UNSET_VAR\n")
    default = tmp_path / "default.yaml"
    default.write_text("model:\n  model_name: m\nengine: ANTHROPIC\n")
    for config, needle in ((named, "SOME_UNSET_VAR, which is not set"), (default, "ANTHROPIC_API_KEY environment")):
        proc = run_cli("config", "check", "-c", str(config), env=env)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        assert "warning:" in proc.stderr and needle in proc.stderr and "without a key" not in proc.stderr, proc.stderr
    env["SOME_UNSET_VAR"] = "sk-set"
    proc = run_cli("config", "check", "-c", str(named), env=env)
    assert proc.returncode == 0 and "warning" not in proc.stderr and "sk-set" not in proc.stdout + proc.stderr


def test_infer_with_an_unset_key_variable_exits_2_and_sends_nothing(tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with stub_server() as url:
        config = tmp_path / "remote.yaml"
        config.write_text(
            f"model:\n  model_name: m\nengine: REMOTE\nremote_params:\n  api_url: {url}\n"
            "  api_key_env_varname: SOME_UNSET_VAR\n"
        )
        env = cli_env()
        env.pop("SOME_UNSET_VAR", None)
        proc = run_cli("infer", "-c", str(config), "--input_path", str(inp), env=env)
        from urllib.request import urlopen

        with urlopen(url + "/_stub/stats") as resp:
            stats = json.loads(resp.read())
    assert proc.returncode == 2 and "SOME_UNSET_VAR" in proc.stderr and "Traceback" not in proc.stderr
    assert stats["requests"] == 0


def test_provider_info_states_each_engines_key_rule_as_data() -> None:
    """One typed row per HTTP engine: what docs, ``config check``, the Ray planner and ``setup`` read."""
    openai, anthropic, remote = (engine_class(n).provider_info() for n in ("OPENAI", "ANTHROPIC", "REMOTE"))
    assert (openai.url, openai.key_env, openai.key_rule, openai.workers) == (
        "https://api.openai.com/v1", "OPENAI_API_KEY", "required", 50,
    )  # fmt: skip
    assert anthropic.key_rule == "required-without-api_url" and anthropic.workers == 5
    assert anthropic.key_required(None) and not anthropic.key_required("http://127.0.0.1:1/v1")
    assert "Anthropic's own API" in anthropic.key_text
    assert remote.key_rule == "optional" and remote.url is None and not remote.key_required(None)
    assert openai.key_required("http://127.0.0.1:1/v1")


# ---------------------------------------------------------------------------- a server that cannot be reached
def test_a_closed_port_stops_the_job_early_with_cannot_reach_and_leaves_no_files(tmp_path: Path) -> None:
    """40 rows to a port nothing listens on: one clear error after the first row's retries, not 40 failed
    rows over tens of seconds; no empty output, partial or errors file."""
    import time

    from tests.servers import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"}]}) + "\n" for i in range(40)))
    started = time.monotonic()
    res = run_cli(
        "infer", "--engine", "REMOTE", "--model.model_name", "m", "--remote_params.api_url", url,
        "--input_path", str(inp), "--output_path", str(tmp_path / "out.jsonl"),
    )  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert f"error: cannot reach {url}/chat/completions" in res.stderr
    assert "Is the server running" in res.stderr and "rows/s" not in res.stderr
    assert time.monotonic() - started < 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_a_server_that_answered_once_and_then_went_away_fails_rows_not_the_job() -> None:
    """Once a request of the engine got through, a refused connection is a row's failure (data), as before."""
    from infermux.configs import GenerationParams
    from infermux.errors import ErrorKind, RowError
    from infermux.types import Conversation, Message, Role
    from tests.fakes.openai_chat import FakeOpenAIChat

    rows = [Conversation(messages=[Message(role=Role.USER, content="hi")])]
    with FakeOpenAIChat() as fake:
        params = RemoteParams(api_url=fake.url + "/v1", max_retries=0)
        engine = engine_class("REMOTE")(ModelParams(model_name="m"), remote_params=params)
        answered = engine.infer(rows)
        assert answered[0].last_message is not None
    again = _answer(engine, rows, GenerationParams())  # the fake is gone: its port refuses connections
    assert isinstance(again[0], RowError) and again[0].kind == ErrorKind.CONNECTION_ERROR


def _answer(engine: RemoteEngine, rows: list, generation: object) -> list:
    import asyncio

    async def run() -> list:
        async with engine.session():
            return await engine.answer(rows, generation)  # type: ignore[arg-type]

    return asyncio.run(run())
