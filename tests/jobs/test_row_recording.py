"""A row whose answer cannot be recorded is that row's problem, never the job's (issue 10 items 1, 2).

The server is real (aiohttp on 127.0.0.1) and answers like an OpenAI-compatible server that stopped
inside an emoji: ``"content": "Here you go: \\ud83d"``, the six-character JSON escape of a lone
UTF-16 surrogate (valid JSON, not encodable as UTF-8).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from infermux.configs import GenerationParams, InferenceConfig, ModelParams, RemoteParams
from infermux.engines.base import InferenceEngine, StreamEvent
from infermux.errors import InputError, RowError
from infermux.inference import RemoteInferenceEngine
from infermux.types import Conversation
from tests.conftest import run_cli
from tests.fakes._server import FakeServer

CUT = "Here you go: \\ud83d"  # as it appears in the JSON body


class CutEmojiServer(FakeServer):
    """OpenAI chat completions; a prompt containing "emoji" gets a reply cut inside an emoji."""

    def routes(self) -> list[tuple[str, str, Any]]:
        return [("POST", "/v1/chat/completions", self._chat)]

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        content = '"' + (CUT if "emoji" in prompt else f"ok: {prompt}") + '"'
        extra = ""
        if "call" in prompt:  # the cut emoji inside a tool call's arguments and in the reasoning
            content = "null"
            extra = (
                ',"reasoning_content":"' + CUT + '","tool_calls":[{"id":"c","type":"function",'
                '"function":{"name":"f","arguments":"{\\"x\\": \\"' + CUT + '\\"}"}}]'
            )
        raw = (
            '{"id":"c1","object":"chat.completion","created":1,"model":"' + body["model"] + '",'
            '"choices":[{"index":0,"message":{"role":"assistant","content":' + content + extra + "},"
            '"finish_reason":"length"}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}'
        )
        return web.Response(body=raw.encode(), content_type="application/json")


@pytest.fixture(scope="module")
def server() -> Any:
    with CutEmojiServer() as srv:
        yield srv


def _conv(text: str) -> Conversation:
    return Conversation.model_validate({"messages": [{"role": "user", "content": text}]})


def _rows(*prompts: str) -> str:
    return "".join(json.dumps({"messages": [{"role": "user", "content": p}]}) + "\n" for p in prompts)


def test_cli_job_saves_a_cut_emoji_as_replacement_character(server: CutEmojiServer, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(_rows("first", "send an emoji", "third"))
    out = tmp_path / "out.jsonl"
    args = ["infer", "--engine", "REMOTE", "--model.model_name", "m", "--remote_params.api_url", server.url]
    res = run_cli(*args, "--input_path", str(src), "--output_path", str(out))
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    replies = [json.loads(line)["messages"][-1]["content"] for line in out.read_text(encoding="utf-8").splitlines()]
    assert replies == ["ok: first", "Here you go: \ufffd", "ok: third"]
    assert not list(tmp_path.glob("*.partial.jsonl")) and not list(tmp_path.glob("*.errors.jsonl"))


def test_cli_job_prints_a_cut_emoji_without_output_file(server: CutEmojiServer, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(_rows("send an emoji", "next"))
    args = ["infer", "--engine", "REMOTE", "--model.model_name", "m", "--remote_params.api_url", server.url]
    res = run_cli(*args, "--input_path", str(src))
    assert res.returncode == 0, res.stderr
    assert "assistant: Here you go: \ufffd" in res.stdout and "assistant: ok: next" in res.stdout


def test_in_memory_infer_replaces_the_surrogate(server: CutEmojiServer, tmp_path: Path) -> None:
    engine = RemoteInferenceEngine(ModelParams(model_name="m"), remote_params=RemoteParams(api_url=server.url))
    convs = [_conv("an emoji please"), _conv("fine")]
    answered = engine.infer(convs)
    assert [c.messages[-1].content for c in answered] == ["Here you go: \ufffd", "ok: fine"]
    out = tmp_path / "deep" / "out.jsonl"  # missing folders are created (issue 10 item 9)
    answered = engine.infer(convs, InferenceConfig(model=ModelParams(model_name="m"), output_path=str(out)))
    assert json.loads(out.read_text(encoding="utf-8").splitlines()[0])["messages"][-1]["content"].endswith("\ufffd")


def test_cut_emoji_in_tool_call_arguments_and_reasoning_is_replaced_too(server: CutEmojiServer) -> None:
    engine = RemoteInferenceEngine(ModelParams(model_name="m"), remote_params=RemoteParams(api_url=server.url))
    (answered,) = engine.infer([_conv("an emoji call please")])
    answer = answered.messages[-1]
    assert "error" not in answered.metadata, answered.metadata
    assert answer.reasoning_content == "Here you go: \ufffd"
    assert answer.tool_calls is not None and answer.tool_calls[0].function.parsed_arguments() == {
        "x": "Here you go: \ufffd"
    }
    answered.to_json().encode("utf-8")  # writable


def test_lone_surrogate_in_an_input_tool_call_is_an_input_error() -> None:
    from infermux.jobs.rows import check_encodable

    bad = Conversation.model_validate(
        {"messages": [{"role": "user", "content": "hi"},
                      {"role": "assistant", "content": None,
                       "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": '{"x": "\ud83d"}'}}]}]}
    )  # fmt: skip
    with pytest.raises(InputError, match=r"messages\.1 has a lone UTF-16 surrogate"):
        check_encodable(bad, path="input[0]")


class UnrecordableEngine(InferenceEngine):
    """An engine whose answer to "bad" carries metadata no JSON writer can take (an object)."""

    engine_type = "ECHO"

    async def _infer_chunk(
        self, conversations: list[Conversation], generation: GenerationParams
    ) -> list[Conversation | RowError]:
        return [c.with_reply("x", {"odd": object()} if c.last_message.text == "bad" else {}) for c in conversations]


def test_a_row_that_cannot_be_recorded_fails_alone(tmp_path: Path) -> None:
    engine = UnrecordableEngine(ModelParams(model_name="m"))
    out = tmp_path / "out.jsonl"
    convs = [_conv(t) for t in ("one", "bad", "three")]
    answered = engine.infer(convs, InferenceConfig(output_path=str(out)))
    assert engine.last_report is not None
    assert (engine.last_report.done, engine.last_report.failed) == (2, 1)
    assert answered[1].metadata["error"]["kind"] == "output_error"
    assert "could not be written" in answered[1].metadata["error"]["message"]
    assert len(out.read_text().splitlines()) == 2
    errors = [json.loads(line) for line in Path(str(out) + ".errors.jsonl").read_text().splitlines()]
    assert [e["line"] for e in errors] == [2]


def test_streamed_pieces_are_printable() -> None:
    event = StreamEvent(delta="cut \ud83d")
    assert event.delta == "cut \ufffd"
    final = StreamEvent(conversation=_conv("q").with_reply("a \udc00 b", {}))
    assert final.conversation is not None and final.conversation.messages[-1].content == "a \ufffd b"


# ------------------------------------------------------------------ the same kind in the input (item 2)
def test_input_check_names_file_line_and_message(tmp_path: Path, server: CutEmojiServer) -> None:
    src = tmp_path / "in.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
    bad = '{"messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "smile \\ud83d"}]}'
    src.write_text(good + "\n" + bad + "\n")
    args = ["infer", "--engine", "REMOTE", "--model.model_name", "m", "--remote_params.api_url", server.url]
    before = len(server.requests)
    res = run_cli(*args, "--input_path", str(src), "--output_path", str(tmp_path / "out.jsonl"))
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert "in.jsonl:2" in res.stderr and "messages.1" in res.stderr and "surrogate" in res.stderr
    assert len(server.requests) == before  # nothing was sent
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_input_check_covers_text_parts_and_in_memory_input() -> None:
    parts = Conversation.model_validate(
        {"messages": [{"role": "user", "content": [{"type": "text", "content": "a \udfff"}]}]}
    )
    engine = UnrecordableEngine(ModelParams(model_name="m"))
    with pytest.raises(InputError, match=r"input\[1\]: messages.0 has a lone UTF-16 surrogate \\udfff"):
        engine.infer([_conv("fine"), parts])


# ------------------------------------------------------------------ a config passed to infer (item 11)
def test_config_passed_to_infer_overrides_model_and_server(server: CutEmojiServer) -> None:
    with CutEmojiServer() as other:
        engine = RemoteInferenceEngine(ModelParams(model_name="old"), remote_params=RemoteParams(api_url=other.url))
        config = InferenceConfig(model=ModelParams(model_name="new"), remote_params=RemoteParams(api_url=server.url))
        before = len(server.requests)
        (answer,) = engine.infer([_conv("hello")], config)
        assert answer.messages[-1].content == "ok: hello"
        assert other.requests == []
        sent = server.requests[before:]
        assert len(sent) == 1 and sent[0].json["model"] == "new"
        assert engine.last_report is not None and engine.last_report.done == 1
        engine.infer([_conv("again")])  # the engine's own settings are unchanged
        assert len(other.requests) == 1 and other.requests[0].json["model"] == "old"
