"""Streamed answers of the Anthropic Messages API, the Gemini API and SGLang (decoders for the SSE seam).

* Anthropic (``"stream": true``): events ``message_start`` (model, input token usage),
  ``content_block_start``/``content_block_delta`` (``text_delta`` pieces)/``content_block_stop``,
  ``message_delta`` (``stop_reason``, output token usage), ``message_stop`` (the end), ``ping``, and
  ``error`` (a failure after the answer started).
* Gemini (``:streamGenerateContent?alt=sse``): each event is a partial ``GenerateContentResponse``;
  the text pieces add up, the last one carries ``finishReason`` and ``usageMetadata``; the stream ends
  when the connection does.
* SGLang ``/generate`` with ``"stream": true``: each ``data:`` event holds the answer *so far* (``text``)
  and its ``meta_info``; ``data: [DONE]`` ends the stream; ``{"error": ...}`` reports a failure.
"""

from __future__ import annotations

import json
from typing import Any

from infermux.engines.remote.sse import SseEvent
from infermux.errors import RemoteError
from infermux.types import Conversation

__all__ = ["AnthropicStream", "GeminiStream", "SGLangStream"]

_ANTHROPIC_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}
_GEMINI_FINISH = {"STOP": "stop", "MAX_TOKENS": "length"}


class AnthropicStream:
    """Decoder of one streamed Messages API answer."""

    def __init__(self, conversation: Conversation) -> None:
        self.conversation = conversation
        self.done = False
        self._text: list[str] = []
        self._input_tokens = 0
        self._output_tokens = 0
        self._metadata: dict[str, Any] = {"finish_reason": None, "stop_reason": None, "model": None}

    def feed(self, event: SseEvent) -> str:
        data = json.loads(event.data)
        kind = data.get("type", event.event)
        if kind == "error":
            error = data.get("error") or {}
            raise RemoteError(f"the server failed mid-answer: {error.get('message', error)}", kind="http_error")
        if kind == "message_start":
            message = data["message"]
            self._metadata["model"] = message.get("model")
            self._input_tokens = int((message.get("usage") or {}).get("input_tokens") or 0)
        elif kind == "content_block_delta":
            delta = data["delta"]
            if delta.get("type") == "text_delta":
                self._text.append(delta["text"])
                return str(delta["text"])
        elif kind == "message_delta":
            stop = (data.get("delta") or {}).get("stop_reason")
            self._metadata["stop_reason"] = stop
            self._metadata["finish_reason"] = _ANTHROPIC_FINISH.get(stop or "", stop)
            self._output_tokens = int((data.get("usage") or {}).get("output_tokens") or self._output_tokens)
        elif kind == "message_stop":
            self.done = True
        return ""

    def result(self) -> Conversation:
        prompt, completion = self._input_tokens, self._output_tokens
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        return self.conversation.with_reply("".join(self._text), {**self._metadata, "usage": usage})


class GeminiStream:
    """Decoder of one streamed ``streamGenerateContent`` answer."""

    def __init__(self, conversation: Conversation) -> None:
        self.conversation = conversation
        self.done = False
        self._text: list[str] = []
        self._metadata: dict[str, Any] = {"finish_reason": None, "model": None}

    def feed(self, event: SseEvent) -> str:
        data = json.loads(event.data)
        if "error" in data:
            raise RemoteError(f"the server failed mid-answer: {data['error'].get('message')}", kind="http_error")
        self._metadata["model"] = data.get("modelVersion") or self._metadata["model"]
        usage = data.get("usageMetadata")
        if usage:
            prompt, completion = int(usage.get("promptTokenCount") or 0), int(usage.get("candidatesTokenCount") or 0)
            total = int(usage.get("totalTokenCount") or prompt + completion)
            self._metadata["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}
        candidates = data.get("candidates") or []
        if not candidates:
            return ""
        first = candidates[0]
        reason = first.get("finishReason")
        if reason:
            self._metadata["finish_reason"] = _GEMINI_FINISH.get(reason, reason.lower())
        parts = (first.get("content") or {}).get("parts") or []
        piece = "".join(p.get("text", "") for p in parts if not p.get("thought"))
        self._text.append(piece)
        return piece

    def result(self) -> Conversation:
        return self.conversation.with_reply("".join(self._text), dict(self._metadata))


class SGLangStream:
    """Decoder of one streamed SGLang ``/generate`` answer (cumulative text in every event)."""

    def __init__(self, conversation: Conversation) -> None:
        self.conversation = conversation
        self.done = False
        self._text = ""
        self._meta: dict[str, Any] = {}

    def feed(self, event: SseEvent) -> str:
        if event.data.strip() == "[DONE]":
            self.done = True
            return ""
        data = json.loads(event.data)
        if "error" in data:
            error = data["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise RemoteError(f"the server failed mid-answer: {message}", kind="http_error")
        text = str(data["text"])
        delta = text[len(self._text) :] if text.startswith(self._text) else text
        self._text = text
        self._meta = data.get("meta_info") or self._meta
        return delta

    def result(self) -> Conversation:
        finish = self._meta.get("finish_reason") or {}
        kind = finish.get("type") if isinstance(finish, dict) else finish
        prompt, completion = int(self._meta.get("prompt_tokens") or 0), int(self._meta.get("completion_tokens") or 0)
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        return self.conversation.with_reply(self._text, {"finish_reason": kind, "usage": usage})
