"""``--tools FILE`` on ``infer`` (batch) and ``chat`` (piped, with ``/tool`` results), against the OpenAI
chat fake; Oumi's tool-calling configs pass ``config check``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from infermux.types import Conversation
from tests.conftest import ROOT, run_cli
from tests.fakes import FakeOpenAIChat

WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
OWN = {"type": "function", "function": {"name": "own_tool", "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAIChat]:
    with FakeOpenAIChat() as server:
        yield server  # type: ignore[misc]


def _remote(fake: FakeOpenAIChat, *extra: str) -> list[str]:
    return ["--engine", "REMOTE", "--remote_params.api_url", fake.url + "/v1", "--model.model_name", "m", *extra]


def test_batch_tools_file_goes_to_rows_without_tools(fake: FakeOpenAIChat, tmp_path: Path) -> None:
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([WEATHER]))
    src = tmp_path / "in.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "a"}]},
        {"messages": [{"role": "user", "content": "b"}], "tools": [OWN]},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    args = ["infer", *_remote(fake, "--generation.tool_choice", "required"), "--tools", str(tools)]
    done = run_cli(*args, "--input_path", str(src), "--output_path", str(out))
    assert done.returncode == 0, done.stderr
    answered = [Conversation.from_json(line) for line in out.read_text().splitlines()]
    assert [t.name for t in answered[0].tools or []] == ["get_weather"]
    assert [t.name for t in answered[1].tools or []] == ["own_tool"]  # a row's own tools win
    assert [c.function.name for c in answered[0].last_message.tool_calls or []] == ["get_weather"]
    assert [c.function.name for c in answered[1].last_message.tool_calls or []] == ["own_tool"]


@pytest.mark.parametrize(
    ("content", "says"),
    [("[", "not valid JSON"), ("[]", "non-empty JSON list"), ('[{"type": "function", "function": {}}]', "tool 0")],
)
def test_bad_tools_file_is_a_user_error(tmp_path: Path, content: str, says: str) -> None:
    tools = tmp_path / "tools.json"
    tools.write_text(content)
    src = tmp_path / "in.jsonl"
    src.write_text('{"messages": [{"role": "user", "content": "a"}]}\n')
    done = run_cli("infer", "--engine", "ECHO", "--tools", str(tools), "--input_path", str(src))
    assert done.returncode == 2 and says in done.stderr and str(tools) in done.stderr
    assert "Traceback" not in done.stderr


def test_piped_chat_shows_the_call_and_takes_the_result(fake: FakeOpenAIChat, tmp_path: Path) -> None:
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([WEATHER]))
    saved = tmp_path / "chat.jsonl"
    lines = ["What is get_weather in Oslo?", "/tool -3 C and snow", f"/save {saved}", ""]
    done = run_cli("chat", *_remote(fake), "--tools", str(tools), input="\n".join(lines))
    assert done.returncode == 0, done.stderr
    assert "[tool call call_" in done.stdout and 'get_weather({"city": "text"})' in done.stdout
    assert "-3 C and snow" in done.stdout  # the fake's answer after the tool result quotes it
    (conv,) = [Conversation.from_json(line) for line in saved.read_text().splitlines()]
    roles = [m.role.value for m in conv.messages]
    assert roles == ["user", "assistant", "tool", "assistant"]
    assert conv.messages[2].tool_call_id == conv.messages[1].tool_calls[0].id  # type: ignore[index]
    assert [t.name for t in conv.tools or []] == ["get_weather"]


@pytest.mark.parametrize("name", ["tools_vllm.yaml", "tools_remote_vllm.yaml"])
def test_oumi_tool_calling_configs_pass_config_check(name: str) -> None:
    done = run_cli("config", "check", "-c", str(ROOT / "configs" / "examples" / name))
    assert done.returncode == 0, done.stderr
    assert "tool_choice" in done.stdout
