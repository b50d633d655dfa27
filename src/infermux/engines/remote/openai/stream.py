"""Streamed OpenAI chat completions: ``chat.completion.chunk`` events in, text deltas and the answer out.

Each event's ``data`` is a chunk whose ``choices[0].delta`` carries the next piece of ``content`` (and,
on reasoning servers, ``reasoning_content``/``reasoning``, and pieces of ``tool_calls``, which carry an
``index``: the first piece of a call brings its ``id`` and function ``name``, later ones more of its
``arguments`` string). Some servers (Ollama, some gateways) send each of several parallel calls whole
with ``index: 0``: a piece that brings a new ``id`` at an index starts a new call; a piece without an
``index`` continues the last call (or starts one when it brings a new ``id``). Only the choice with
``index`` 0 is read (a stream asks for one answer); the chunk with a ``finish_reason`` ends the choice; with
``stream_options.include_usage`` a last chunk with empty ``choices`` carries ``usage``; ``data: [DONE]``
ends the stream. An ``{"error": ...}`` object inside the stream is a failure.
"""

from __future__ import annotations

import json
from typing import Any

from infermux.engines.remote.http.sse import SseEvent
from infermux.engines.remote.openai.format import finish_reason_for
from infermux.engines.tool_calls import new_call_id, whole_calls
from infermux.errors import RemoteError
from infermux.types import Conversation, FinishReason, FunctionCall, ToolCall, Usage

__all__ = ["ChatCompletionStream"]


class ChatCompletionStream:
    """Decoder (see :class:`~infermux.engines.remote.http.sse.StreamDecoder`) for one streamed answer."""

    def __init__(self, conversation: Conversation) -> None:
        self.conversation = conversation
        self.done = False
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._metadata: dict[str, Any] = {"finish_reason": None, "model": None}
        self._calls: list[dict[str, Any]] = []
        self._at_index: dict[int, dict[str, Any]] = {}  # the latest call streamed under each index

    def feed(self, event: SseEvent) -> str:
        if event.data.strip() == "[DONE]":
            self.done = True
            return ""
        data = json.loads(event.data)
        if not isinstance(data, dict):
            raise TypeError(f"expected a JSON object, got {type(data).__name__}")
        error = data.get("error")
        if error:
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise RemoteError(f"the server failed mid-answer: {message}", kind="http_error")
        if data.get("model"):
            self._metadata["model"] = data["model"]
        usage = Usage.from_openai(data.get("usage"))
        if usage is not None:
            self._metadata["usage"] = usage.to_json_dict()
        choice = next((c for c in data.get("choices") or () if isinstance(c, dict) and not c.get("index")), None)
        if choice is None:
            return ""
        # "message" instead of "delta": a server that ignored stream=true and answered at once.
        delta = choice.get("delta") or choice.get("message") or {}
        if choice.get("finish_reason"):
            self._metadata["finish_reason"] = FinishReason.parse(choice["finish_reason"])
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if reasoning:
            self._reasoning.append(reasoning)
        for piece in delta.get("tool_calls") or ():
            self._add_call_piece(piece)
        content = delta.get("content")
        if content is None:
            return ""
        if not isinstance(content, str):
            raise TypeError(f"delta.content is {type(content).__name__}, expected a string")
        self._text.append(content)
        return content

    def _add_call_piece(self, piece: Any) -> None:
        if not isinstance(piece, dict):
            raise TypeError(f"delta.tool_calls item is {type(piece).__name__}, expected an object")
        index, call_id = piece.get("index"), piece.get("id")
        call = self._calls[-1] if index is None and self._calls else self._at_index.get(int(index or 0))
        if call is None or (call_id and call["id"] and call_id != call["id"]):
            call = {"id": None, "name": "", "arguments": []}
            self._calls.append(call)
            if index is not None:
                self._at_index[int(index)] = call
        if call_id:
            call["id"] = call_id
        function = piece.get("function") or {}
        if function.get("name"):
            call["name"] += function["name"]
        if function.get("arguments"):
            call["arguments"].append(function["arguments"])

    @property
    def finished(self) -> bool:
        return self.done or self._metadata["finish_reason"] is not None

    def tool_calls(self) -> list[ToolCall] | None:
        """The calls assembled so far, in the order they started."""
        if not self._calls:
            return None
        return [
            ToolCall(
                id=c["id"] or new_call_id(),
                function=FunctionCall(name=c["name"], arguments="".join(c["arguments"]) or "{}"),
            )
            for c in self._calls
        ]

    def result(self) -> Conversation:
        metadata = dict(self._metadata)
        calls = whole_calls(self.tool_calls(), metadata.get("finish_reason"))
        metadata["finish_reason"] = finish_reason_for(metadata.get("finish_reason"), calls)
        return self.conversation.with_reply(
            "".join(self._text), metadata, tool_calls=calls, reasoning_content="".join(self._reasoning) or None
        )
