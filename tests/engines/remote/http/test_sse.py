"""Server-sent events framing and the OpenAI chunk decoder, on byte streams as servers send them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from infermux.engines.remote.http.sse import SseEvent, iter_sse
from infermux.engines.remote.openai.stream import ChatCompletionStream
from infermux.errors import RemoteError
from infermux.types import Conversation


async def _lines(raw: bytes) -> AsyncIterator[bytes]:
    for line in raw.splitlines(keepends=True):
        yield line


def parse(raw: bytes) -> list[SseEvent]:
    async def collect() -> list[SseEvent]:
        return [e async for e in iter_sse(_lines(raw))]

    return asyncio.run(collect())


def test_sse_framing_follows_the_standard() -> None:
    raw = (
        b": keep-alive comment\r\n\r\n"
        b"data: one\r\n\r\n"
        b'event: content_block_delta\ndata: {"a":\ndata: 1}\n\n'
        b"data:no-space\n\n"
        b"id: 7\nretry: 100\n\n"
        b"data: tail without blank line"
    )
    assert parse(raw) == [
        SseEvent("one"),
        SseEvent('{"a":\n1}', "content_block_delta"),
        SseEvent("no-space"),
        SseEvent("tail without blank line"),
    ]


def _chunk(**fields: object) -> SseEvent:
    return SseEvent(json.dumps(fields))


def test_chat_completion_stream_collects_text_usage_and_reasoning() -> None:
    conv = Conversation(messages=[{"role": "user", "content": "hi"}])  # type: ignore[list-item]
    decoder = ChatCompletionStream(conv)
    deltas = [
        decoder.feed(_chunk(model="m", choices=[{"delta": {"role": "assistant"}, "finish_reason": None}])),
        decoder.feed(_chunk(model="m", choices=[{"delta": {"reasoning_content": "think"}}])),
        decoder.feed(_chunk(model="m", choices=[{"delta": {"content": "Hel"}}])),
        decoder.feed(_chunk(model="m", choices=[{"delta": {"content": "lo"}, "finish_reason": "stop"}])),
        decoder.feed(_chunk(model="m", choices=[], usage={"prompt_tokens": 3, "completion_tokens": 2})),
        decoder.feed(SseEvent("[DONE]")),
    ]
    assert deltas == ["", "", "Hel", "lo", "", ""]
    assert decoder.done
    answered = decoder.result()
    assert answered.last_message.text == "Hello"
    assert answered.last_message.reasoning_content == "think"
    assert answered.metadata == {
        "finish_reason": "stop",
        "model": "m",
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},  # total computed (Usage)
    }


def test_chat_completion_stream_assembles_parallel_tool_call_deltas_by_index() -> None:
    conv = Conversation(messages=[{"role": "user", "content": "weather in Paris and Rome?"}])  # type: ignore[list-item]
    decoder = ChatCompletionStream(conv)
    first = {"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    second = {"index": 1, "id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": '{"ci'}}
    for delta in (
        {"role": "assistant", "content": None, "tool_calls": [first]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
        {"tool_calls": [second]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
        {"tool_calls": [{"index": 1, "function": {"arguments": 'ty": "Rome"}'}}]},
    ):
        assert decoder.feed(_chunk(model="m", choices=[{"index": 0, "delta": delta}])) == ""
    decoder.feed(_chunk(model="m", choices=[{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]))
    decoder.feed(SseEvent("[DONE]"))
    answer = decoder.result().last_message
    assert answer.content is None
    assert [(c.id, c.function.name, c.function.parsed_arguments()) for c in answer.tool_calls] == [
        ("call_a", "get_weather", {"city": "Paris"}),
        ("call_b", "get_weather", {"city": "Rome"}),
    ]
    assert decoder.result().metadata["finish_reason"] == "tool_calls"


def test_chat_completion_stream_rejects_errors_and_garbage() -> None:
    conv = Conversation(messages=[{"role": "user", "content": "hi"}])  # type: ignore[list-item]
    with pytest.raises(RemoteError, match="overloaded"):
        ChatCompletionStream(conv).feed(_chunk(error={"message": "overloaded"}))
    with pytest.raises(ValueError):
        ChatCompletionStream(conv).feed(SseEvent("{not json"))
    with pytest.raises(TypeError):
        ChatCompletionStream(conv).feed(_chunk(choices=[{"delta": {"content": 5}}]))


# vLLM's own streamer of tool_choice "required" (what `vllm serve` runs for every streamed forced call): its
# model output is a JSON array of {"name", "parameters"} objects, whose text arrives in pieces of any size.
REQUIRED_OUTPUTS = [
    '[{"name": "get_weather", "parameters": {"city": "Rome"}}]',
    '[ {\n  "name" : "set_alarm",\n  "parameters" : { "hour" : 17 }\n} ]',
    '[{"name": "get_weather", "parameters": {"city": "Paris"}}, {"name": "set_alarm", "parameters": {"hour": 7}}]',
    '[{"name": "note", "parameters": {"text": "a \\"}\\" b {", "tags": [1, {"x": [2]}], "é": "日本"}}]',
]


def _splits(size: int) -> list[list[int]]:
    """Piece ends: the text whole, cut once at every place, one character at a time, and random cuts."""
    import random

    rng = random.Random(5)
    cuts = [[size], *([at, size] for at in range(1, size)), list(range(1, size + 1))]
    for _ in range(50):
        cuts.append(sorted({*rng.sample(range(1, size), k=min(size - 1, 6)), size}))
    return cuts


@pytest.mark.parametrize("output", REQUIRED_OUTPUTS)
def test_vllms_required_call_stream_is_assembled_whatever_the_pieces(output: str) -> None:
    """The chunks ``vllm serve`` sends (its streamer and its response classes, serialized as it does), for
    every way of cutting the model's text: the assembled calls equal the whole text's."""
    streaming = pytest.importorskip("vllm.tool_parsers.streaming")
    from vllm.entrypoints.openai.chat_completion.protocol import (
        ChatCompletionResponseStreamChoice,
        ChatCompletionStreamResponse,
    )

    conv = Conversation(messages=[{"role": "user", "content": "call"}])  # type: ignore[list-item]
    expected = [(c["name"], c["parameters"]) for c in json.loads(output)]
    for ends in _splits(len(output)):
        decoder, previous, ids = ChatCompletionStream(conv), "", []
        for end in ends:
            current = output[:end]
            delta, _ = streaming.extract_required_tool_call_streaming(
                previous_text=previous, current_text=current, tool_call_idx=None, tool_call_id_type="random"
            )
            if delta is not None:
                choice = ChatCompletionResponseStreamChoice(index=0, delta=delta)
                decoder.feed(
                    SseEvent(
                        ChatCompletionStreamResponse(model="m", choices=[choice]).model_dump_json(exclude_unset=True)
                    )
                )
                ids += [c.id for c in delta.tool_calls if c.id]
            previous = current
        stop = ChatCompletionResponseStreamChoice(index=0, delta={}, finish_reason="tool_calls")
        decoder.feed(
            SseEvent(ChatCompletionStreamResponse(model="m", choices=[stop]).model_dump_json(exclude_unset=True))
        )
        calls = decoder.result().last_message.tool_calls or []
        assert [(c.function.name, c.function.parsed_arguments()) for c in calls] == expected, ends
        assert [c.id for c in calls] == ids and len(set(ids)) == len(expected)
