"""Oumi data files through whole jobs (issue 24): keys infermux does not know, at the conversation,
message and content-item level, come back intact from ``infermux infer``; any conversation the data
model holds (unknown keys, tools, tool calls, reasoning, images) comes back from a job as it went in,
plus the answer."""

from __future__ import annotations

import asyncio
import base64
import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from infermux_echo import EchoEngine

from infermux.configs import ModelParams
from infermux.engines.capabilities import Capabilities
from infermux.types import Conversation
from tests.conftest import run_cli
from tests.fakes import FakeOpenAIChat
from tests.test_types_roundtrip import _extras, conversations


def test_infer_keeps_unknown_keys_at_every_level(tmp_path: Path) -> None:
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Be brief.", "weight": 0},
                {
                    "role": "user",
                    "name": "ann",
                    "content": [
                        {"type": "text", "content": "Describe", "detail": "high"},
                        {"type": "image_url", "content": "https://example.com/a.png", "alt": {"text": "a cat"}},
                    ],
                },
            ],
            "source": "wiki",
            "split": "train",
            "metadata": {"k": 1},
        },
        {"conversation_id": "c2", "messages": [{"role": "user", "content": "two", "lang": "en"}], "extra": [1, None]},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    with FakeOpenAIChat() as fake:
        args = ["--engine", "REMOTE", "--remote_params.api_url", fake.url + "/v1", "--model.model_name", "m"]
        done = run_cli("infer", *args, "--input_path", str(src), "--output_path", str(out))
    assert done.returncode == 0, done.stderr
    answered = [json.loads(line) for line in out.read_text().splitlines()]
    for row, got in zip(rows, answered, strict=True):
        assert got["messages"][: len(row["messages"])] == row["messages"]
        assert got["messages"][-1]["role"] == "assistant"
        assert {k: v for k, v in got.items() if k not in ("conversation_id", "messages", "metadata")} == {
            k: v for k, v in row.items() if k not in ("conversation_id", "messages", "metadata")
        }
        assert got["metadata"].items() >= row.get("metadata", {}).items()
    assert answered[1]["conversation_id"] == "c2" and answered[0]["source"] == "wiki"


class _EchoAll(EchoEngine):
    """The echo test engine, taking images and tools (it answers from the last message's text)."""

    capabilities = Capabilities(images=True, tools=True, streaming=False)


@st.composite
def _rows_with_extras(draw: st.DrawFn) -> dict[str, Any]:
    data = draw(conversations())
    data.update(draw(_extras({"conversation_id", "messages", "metadata", "tools"})))
    for message in data["messages"]:
        message.update(draw(_extras({"id", "role", "content", "tool_calls", "tool_call_id", "reasoning_content"})))
        for item in message["content"] if isinstance(message["content"], list) else ():
            item.update(draw(_extras({"type", "content", "binary"})))
            if isinstance(item.get("binary"), bytes):  # JSON carries the bytes as base64
                item["binary"] = base64.b64encode(item["binary"]).decode("ascii")
    return data


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_rows_with_extras(), min_size=1, max_size=4))
def test_a_job_gives_every_row_back_with_its_answer(rows: list[dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        engine = _EchoAll(ModelParams(model_name="echo"))
        report = asyncio.run(engine.run_file(str(src), str(out)))
        assert report.ok and report.done == len(rows)
        for row, line in zip(rows, out.read_text(encoding="utf-8").split("\n")[:-1], strict=True):
            got = json.loads(line)
            expected = Conversation.from_dict(row).to_json_dict()  # the row as the data model writes it
            added = got["messages"].pop()
            assert added["role"] == "assistant" and added["content"].startswith("echo: ")
            assert got["metadata"].pop("usage") and got["metadata"].pop("finish_reason", None) is None
            given_id = expected.pop("conversation_id", None)
            row_id = got.pop("conversation_id")  # a row without one gets its stable row id
            assert row_id == given_id if given_id else isinstance(row_id, str) and row_id
            expected.setdefault("metadata", {})
            got["metadata"] = {k: v for k, v in got["metadata"].items() if k in expected["metadata"]}
            assert got == expected
            assert Conversation.from_json(line).messages[:-1] == Conversation.from_dict(row).messages


_CONV_KEYS = {"conversation_id", "messages", "metadata", "tools"}
_MESSAGE_KEYS = {"id", "role", "content", "tool_calls", "tool_call_id", "reasoning_content"}
_ITEM_KEYS = {"type", "content", "binary"}


def _unknown(data: dict[str, Any], known: set[str]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in known}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_rows_with_extras())
def test_from_json_to_json_keeps_unknown_keys_at_every_level(row: dict[str, Any]) -> None:
    conv = Conversation.from_json(json.dumps(row))
    line = conv.to_json()
    written = json.loads(line)
    assert Conversation.from_json(line) == conv and Conversation.from_json(line).to_json() == line
    assert _unknown(written, _CONV_KEYS) == _unknown(row, _CONV_KEYS)
    assert ("conversation_id" in written) == ("conversation_id" in row)  # nothing added that was not given
    assert ("metadata" in written) == ("metadata" in row)
    for got, given_message in zip(written["messages"], row["messages"], strict=True):
        assert _unknown(got, _MESSAGE_KEYS) == _unknown(given_message, _MESSAGE_KEYS)
        if isinstance(given_message["content"], list):
            for got_item, given_item in zip(got["content"], given_message["content"], strict=True):
                assert _unknown(got_item, _ITEM_KEYS) == _unknown(given_item, _ITEM_KEYS)


def test_unknown_keys_do_not_count_for_the_answer_cache() -> None:
    from infermux.jobs.options import request_of

    plain = {"messages": [{"role": "user", "content": [{"type": "text", "content": "hi"}]}]}
    marked = {
        "messages": [{"role": "user", "name": "ann", "content": [{"type": "text", "content": "hi", "detail": 1}]}],
        "split": "train",
    }
    assert request_of(Conversation.from_dict(marked)) == request_of(Conversation.from_dict(plain))
    assert request_of(Conversation.from_dict(marked)) != request_of(
        Conversation.from_dict({"messages": [{"role": "user", "content": "other"}]})
    )
