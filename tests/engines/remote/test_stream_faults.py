"""Streams that go wrong in ways servers really do: cut short, ignored, one huge event, reused call indexes.

Against the OpenAI chat fake's ``stream_style`` (a real HTTP server on 127.0.0.1), and each protocol's
decoder for the end-of-answer rule.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from infermux.configs import GenerationParams, ModelParams, RemoteParams
from infermux.engines.base import StreamEvent
from infermux.engines.registry import engine_class
from infermux.engines.remote.anthropic.engine import AnthropicStream
from infermux.engines.remote.gemini.engine import GeminiStream
from infermux.engines.remote.http.sse import SseEvent, iter_lines, iter_sse
from infermux.engines.remote.openai.format import reply as format_reply
from infermux.engines.remote.openai.stream import ChatCompletionStream
from infermux.engines.remote.sglang import SGLangStream
from infermux.errors import RemoteError
from infermux.types import Conversation
from tests.fakes import FakeOpenAIChat

TOOLS = [
    {"type": "function", "function": {"name": "write_file", "parameters": {
        "type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}},
    {"type": "function", "function": {"name": "read_file", "parameters": {
        "type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}},
]  # fmt: skip


@pytest.fixture
def fake() -> Iterator[FakeOpenAIChat]:
    with FakeOpenAIChat(lambda ex: "The answer is 4") as server:
        assert isinstance(server, FakeOpenAIChat)
        yield server


def _ask(text: str = "2+2?", tools: list[dict[str, Any]] | None = None) -> Conversation:
    return Conversation.model_validate({"messages": [{"role": "user", "content": text}], "tools": tools})


def _stream(fake: FakeOpenAIChat, conversation: Conversation, **generation: Any) -> list[StreamEvent]:
    engine = engine_class("REMOTE")(
        ModelParams(model_name="gpt-fake"),
        generation_params=GenerationParams(**{"max_new_tokens": 64, **generation}),
        remote_params=RemoteParams(api_url=fake.url + "/v1", max_retries=0),
    )

    async def run() -> list[StreamEvent]:
        return [event async for event in engine.stream(conversation)]

    return asyncio.run(run())


def test_a_stream_cut_before_its_finish_reason_is_an_error_not_an_answer(fake: FakeOpenAIChat) -> None:
    fake.stream_style = "cut"
    with pytest.raises(RemoteError, match="ended before the answer did") as caught:
        _stream(fake, _ask())
    assert caught.value.kind == "connection_error" and caught.value.retryable
    fake.stream_style = "standard"  # the same answer, whole
    events = _stream(fake, _ask())
    assert "".join(e.delta for e in events) == "The answer is 4"
    assert events[-1].metadata["finish_reason"] == "stop"


def test_a_server_that_ignores_stream_true_gives_its_whole_answer(fake: FakeOpenAIChat) -> None:
    fake.stream_style = "plain_json"
    events = _stream(fake, _ask())
    assert fake.requests[-1].json["stream"] is True
    assert "".join(e.delta for e in events) == "The answer is 4"
    final = events[-1].conversation
    assert final is not None and final.last_message.text == "The answer is 4"
    assert final.metadata["finish_reason"] == "stop" and final.usage is not None


def test_one_event_of_1_2_mb_arrives_whole() -> None:
    big = "x" * 1_200_000  # one word: the fake sends it as one data: line
    with FakeOpenAIChat(lambda ex: big) as server:
        assert isinstance(server, FakeOpenAIChat)
        events = _stream(server, _ask())
    assert "".join(e.delta for e in events) == big
    assert events[-1].conversation is not None and events[-1].conversation.last_message.text == big


def test_parallel_calls_sharing_index_0_stay_separate_calls(fake: FakeOpenAIChat) -> None:
    fake.stream_style = "shared_index"
    events = _stream(fake, _ask("hi", TOOLS), tool_choice="required")
    final = events[-1].conversation
    assert final is not None
    calls = final.last_message.tool_calls or []
    assert [(c.function.name, c.function.parsed_arguments()) for c in calls] == [
        ("write_file", {"path": "text"}),
        ("read_file", {"name": "text"}),
    ]
    assert len({c.id for c in calls}) == 2


def _feed(decoder: Any, *chunks: dict[str, Any]) -> None:
    for chunk in chunks:
        decoder.feed(SseEvent(json.dumps(chunk)))


def test_openai_decoder_reads_choice_0_and_pieces_without_an_index() -> None:
    decoder = ChatCompletionStream(_ask())
    call = {"id": "c1", "type": "function", "function": {"name": "write_file", "arguments": '{"path"'}}
    _feed(
        decoder,
        {"choices": [{"index": 1, "delta": {"content": "other choice"}}]},
        {"choices": [{"index": 1, "delta": {}}, {"index": 0, "delta": {"tool_calls": [call]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"function": {"arguments": ': "a"}'}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"id": "c2", "function": {"name": "read_file"}}]}}]},
    )
    assert not decoder.finished
    _feed(decoder, {"choices": [{"index": 1, "delta": {}, "finish_reason": "stop"}]})
    assert not decoder.finished  # another choice's finish reason is not this one's
    _feed(decoder, {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    assert decoder.finished
    answer = decoder.result().last_message
    assert answer.text == ""
    assert [(c.id, c.function.name, c.function.arguments) for c in answer.tool_calls or []] == [
        ("c1", "write_file", '{"path": "a"}'),
        ("c2", "read_file", "{}"),
    ]


def test_every_protocol_decoder_knows_when_its_answer_is_whole() -> None:
    openai = ChatCompletionStream(_ask())
    _feed(openai, {"choices": [{"delta": {"content": "The answer is 4"}, "finish_reason": None}]})
    assert not openai.finished
    openai.feed(SseEvent("[DONE]"))
    assert openai.finished

    anthropic = AnthropicStream(_ask())
    _feed(
        anthropic,
        {"type": "message_start", "message": {"model": "claude", "usage": {"input_tokens": 3}}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "The answer is 4"}},
    )
    assert not anthropic.finished
    _feed(anthropic, {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 4}})
    assert anthropic.finished

    gemini = GeminiStream(_ask(), GenerationParams())
    _feed(gemini, {"candidates": [{"content": {"parts": [{"text": "The answer is 4"}]}}]})
    assert not gemini.finished
    _feed(gemini, {"candidates": [{"content": {"parts": []}, "finishReason": "STOP"}]})
    assert gemini.finished

    sglang = SGLangStream(_ask())
    _feed(sglang, {"text": "The answer is 4", "meta_info": {"finish_reason": None}})
    assert not sglang.finished
    _feed(sglang, {"text": "The answer is 4", "meta_info": {"finish_reason": {"type": "stop"}}})
    assert sglang.finished


def test_lines_of_any_length_are_split_from_chunks_of_any_size() -> None:
    body = b"data: " + b"y" * 300_000 + b"\n\ndata: [DONE]\n\n"

    async def chunks(size: int) -> AsyncIterator[bytes]:
        for at in range(0, len(body), size):
            yield body[at : at + size]

    async def events(size: int, limit: int) -> list[SseEvent]:
        return [e async for e in iter_sse(iter_lines(chunks(size), limit))]

    for size in (1000, 65536, len(body)):
        assert asyncio.run(events(size, 2**20)) == [SseEvent("y" * 300_000), SseEvent("[DONE]")]
    with pytest.raises(ValueError, match="longer than 100000 bytes"):
        asyncio.run(events(65536, 100_000))


def test_a_call_cut_by_the_token_limit_is_a_length_answer_without_calls_streamed_or_whole() -> None:
    # What vLLM's server sends for a forced call cut by max_tokens: half the arguments, finish_reason length.
    half = {"index": 0, "id": "c1", "type": "function", "function": {"name": "write_file", "arguments": '{"pa'}}
    decoder = ChatCompletionStream(_ask())
    _feed(decoder, {"choices": [{"index": 0, "delta": {"tool_calls": [half]}}]},
          {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})  # fmt: skip
    streamed = decoder.result()
    whole = format_reply(
        _ask(),
        {
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "length",
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [{k: v for k, v in half.items() if k != "index"}],
                    },
                }
            ],
        },
    )
    for answer in (streamed, whole):
        assert answer.metadata["finish_reason"] == "length"
        assert answer.last_message.tool_calls is None and not answer.last_message.content
    done = {"index": 0, "id": "c1", "type": "function", "function": {"name": "write_file", "arguments": "{}"}}
    kept = ChatCompletionStream(_ask())  # whole arguments cut after the call: the call stays
    _feed(kept, {"choices": [{"index": 0, "delta": {"tool_calls": [done]}, "finish_reason": "length"}]})
    assert [c.id for c in kept.result().last_message.tool_calls or []] == ["c1"]


def test_anthropic_tool_call_cut_by_max_tokens_is_a_length_answer_without_the_half_call() -> None:
    """Anthropic closes a tool_use block cut by max_tokens with its partial JSON, then says max_tokens: the
    answer is `length` with no call (as on every engine, issue 23 item 8), not a stream error."""
    decoder = AnthropicStream(_ask(tools=TOOLS))
    _feed(
        decoder,
        {"type": "message_start", "message": {"model": "claude", "usage": {"input_tokens": 3}}},
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "tool_use", "id": "toolu_1", "name": "write_file", "input": {}}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"pa'}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 4}},
        {"type": "message_stop"},
    )  # fmt: skip
    answer = decoder.result()
    assert answer.finish_reason == "length" and answer.messages[-1].tool_calls is None
    assert not answer.messages[-1].content
