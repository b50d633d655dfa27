"""ANTHROPIC: Anthropic's Messages API (``POST /v1/messages``).

Protocol mapping (from Anthropic's API reference):

* every system message goes to the top-level ``system`` string (Messages has no system role);
* consecutive turns of the same role are merged into one turn of content blocks;
* images become ``image`` blocks with a ``base64`` source (paths, bytes, data URLs) or a ``url``
  source (http/https URLs), never OpenAI-style ``image_url`` parts;
* ``max_tokens`` is required (``max_new_tokens``); ``temperature`` (0-1), ``top_p``,
  ``stop_sequences``; guided JSON becomes ``output_config.format`` (``json_schema``, objects closed
  with ``additionalProperties: false`` as structured outputs require);
* the reply's text blocks are joined; ``usage`` and ``stop_reason`` go to the metadata;
* ``generation.service_tier`` (``auto`` or ``standard_only``) goes out as ``service_tier``; the tier that
  answered (``usage.service_tier``: ``standard``, ``priority``) goes to ``metadata["service_tier"]``;
* tools, ``tool_use`` / ``tool_result`` blocks and thinking: see :mod:`.tools`;
* prompt caching (``remote_params.anthropic_prompt_caching``): by default, as Oumi does, automatic
  caching: a top-level ``cache_control: {type: ephemeral}``, which caches the prompt up to its last block
  (later turns of a conversation, and repeated rows, read it back); ``true`` instead sends the system
  prompt as one text block, and the last tool definition (when tools are sent), with that
  ``cache_control``, which caches the prompt up to that point; ``false``: none. Usage then reports
  ``cache_read_input_tokens`` and ``cache_creation_input_tokens`` next to ``input_tokens`` (which
  excludes both); the row's usage has ``prompt_tokens`` = all three, ``cached_tokens`` = the cache
  reads, ``cache_creation_tokens`` = the cache writes (priced at their own rates).

Auth is the ``x-api-key`` header (``ANTHROPIC_API_KEY``) plus ``anthropic-version``. Message Batches
(``infermux batch ...``) live in :mod:`.batches`.
"""

from __future__ import annotations

import json
from typing import Any

from infermux.configs.generation_params import GenerationParams
from infermux.configs.model_params import ModelParams
from infermux.configs.remote_params import RemoteParams
from infermux.engines.capabilities import Capabilities
from infermux.engines.remote.anthropic.batches import MessageBatchesClient
from infermux.engines.remote.anthropic.models import (
    SAMPLING_PARAMS,
    claude_limit_problems,
    sends_sampling,
    warn_dropped_sampling,
)
from infermux.engines.remote.anthropic.tools import assistant_blocks, reply_parts, tool_fields, tool_result_block
from infermux.engines.remote.base import RemoteEngine
from infermux.engines.remote.http.sse import SseEvent
from infermux.engines.remote.http.transport import HttpRequest
from infermux.engines.remote.http.urls import append_path, endpoint_url
from infermux.engines.remote.json_schema import close_objects
from infermux.engines.remote.media import image_payload
from infermux.engines.remote.messages import merge_turns
from infermux.engines.tool_calls import CallPairing
from infermux.errors import AuthenticationError, RemoteError
from infermux.types import Conversation, FinishReason, Message, Usage

__all__ = ["ANTHROPIC_VERSION", "AnthropicInferenceEngine", "build_messages"]

ANTHROPIC_VERSION = "2023-06-01"
_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})


def _usage(usage: Any) -> Usage | None:
    """Messages API ``usage`` in our terms: Anthropic's ``input_tokens`` excludes the prompt tokens read
    from or written to the prompt cache; our ``prompt_tokens`` counts them all, and ``cached_tokens`` /
    ``cache_creation_tokens`` say how many were read / written. ``output_tokens`` includes extended
    thinking (billed as output). A reply without usage (another server speaking the protocol) has none:
    None, never zeros (an unknown count is priced as unknown, not as free)."""
    if not isinstance(usage, dict):
        return None
    read, created = usage.get("cache_read_input_tokens"), usage.get("cache_creation_input_tokens")
    given, output = usage.get("input_tokens"), usage.get("output_tokens")
    if given is None and output is None:
        return None
    prompt = None if given is None else int(given) + int(read or 0) + int(created or 0)
    return Usage.of(prompt, output, cached_tokens=read, cache_creation_tokens=created)


_EPHEMERAL = {"cache_control": {"type": "ephemeral"}}


def _content_blocks(message: Message) -> list[dict[str, Any]]:
    if not isinstance(message.content, list):
        return [{"type": "text", "text": message.text}]
    blocks: list[dict[str, Any]] = []
    for item in message.content:
        if not item.is_image():
            blocks.append({"type": "text", "text": item.content or ""})
            continue
        image = image_payload(item)
        if image.data is None:
            if not (image.url or "").startswith(("http://", "https://")):
                raise ValueError(f"Anthropic takes image URLs over http(s) only, got {image.url!r}")
            blocks.append({"type": "image", "source": {"type": "url", "url": image.url}})
        elif image.media_type not in _MEDIA_TYPES:
            raise ValueError(
                f"Anthropic accepts JPEG, PNG, GIF or WebP images; this one is {image.media_type or 'unknown'}"
            )
        else:
            source = {"type": "base64", "media_type": image.media_type, "data": image.base64}
            blocks.append({"type": "image", "source": source})
    return blocks


def build_messages(conversation: Conversation) -> tuple[str | None, list[dict[str, Any]]]:
    """The ``system`` string and the ``messages`` list for ``conversation``. Calls without an id get one
    (``toolu_<turn>_<n>``) and a tool message without ``tool_call_id`` answers the next unanswered call."""
    system, turns = merge_turns(
        conversation,
        CallPairing("toolu"),
        content=_content_blocks,
        calls=lambda message, ids: assistant_blocks(message, ids, conversation.metadata),
        result=tool_result_block,
    )
    for turn in turns:  # a lone text block reads better (and is shorter) as a plain string
        if len(turn["content"]) == 1 and turn["content"][0]["type"] == "text":
            turn["content"] = turn["content"][0]["text"]
    return ("\n\n".join(system) if system else None), turns


class AnthropicInferenceEngine(RemoteEngine):
    """Claude models through Anthropic's Messages API (or any server speaking it, like ``vllm serve``)."""

    capabilities = Capabilities(
        generation_params=frozenset({"temperature", "top_p", "stop_strings", "n"}),
        guided_decoding=frozenset({"json"}),
        images=True,
        streaming=True,
        tools=True,
        batch_api=True,
        notes=(
            "temperature must be between 0 and 1; recent models accept temperature or top_p, not both.",
            "Opus >= 4.7, Sonnet >= 5 and claude-fable/mythos models take no sampling parameters: none are sent "
            "(model_kwargs.accepts_sampling: false/true overrides the table for a newer model).",
            "n > 1 sends n requests per row; no log-probabilities.",
            "With model_kwargs.thinking (extended thinking) no temperature is sent; budget_tokens must be at least "
            "1024 and below max_new_tokens, with no forced tool_choice and top_p >= 0.95 (checked before sending).",
        ),
        value_ranges={"temperature": (0.0, 1.0)},
        service_tiers=("auto", "standard_only"),
    )
    repeat_for_n = True
    default_api_url = "https://api.anthropic.com"
    api_key_env = "ANTHROPIC_API_KEY"
    provider = "Anthropic"
    default_num_workers = 5
    # Checked in __init__: Anthropic's own API needs a key, another server (vllm serve) may not.
    requires_api_key = False

    def setup(self) -> None:
        super().setup()
        params = self.remote_params or RemoteParams()
        if not self._secrets and not params.server_url:
            raise AuthenticationError(self._missing_key_message(params), kind="authentication")
        self.sends_sampling = sends_sampling(self.model_params.model_name, self.model_params.model_kwargs)
        self._warned_sampling = False

    def endpoint_url(self, api_url: str) -> str:
        return endpoint_url(api_url, append_path("/messages", base="/v1"))

    @classmethod
    def config_limit_problems(cls, model: ModelParams, generation: GenerationParams) -> list[str]:
        declared = super().config_limit_problems(model, generation)
        return claude_limit_problems(declared, model.model_name, model.model_kwargs, generation)

    def batch_client(self) -> MessageBatchesClient:
        """Anthropic's Message Batches on this server."""
        return MessageBatchesClient(self)

    def build_headers(self, api_key: str | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        return headers

    def _sampling_fields(self, generation: GenerationParams) -> dict[str, Any]:
        if not self.sends_sampling:
            explicit = set(SAMPLING_PARAMS) & generation.model_fields_set
            if explicit and not self._warned_sampling:
                self._warned_sampling = True
                warn_dropped_sampling("ANTHROPIC", self.model_params.model_name, explicit)
            return {}
        # Anthropic's default temperature is 1; ours is 0 (greedy). Send it unless the user asked for
        # nucleus sampling only, since recent models refuse temperature together with top_p, or for
        # extended thinking, which takes no temperature.
        fields: dict[str, Any] = {}
        top_p_set = generation.top_p < 1.0
        thinking = self.model_params.model_kwargs.get("thinking")
        if not (top_p_set and generation.temperature == 0.0) and thinking is None:
            fields["temperature"] = generation.temperature
        if top_p_set:
            fields["top_p"] = generation.top_p
        return fields

    def build_body(self, conversation: Conversation, generation: GenerationParams) -> dict[str, Any]:
        system, messages = build_messages(conversation)
        body: dict[str, Any] = {
            "model": self.model_params.model_name,
            "max_tokens": generation.max_new_tokens,
            "messages": messages,
        }
        setting = self.remote_params.anthropic_prompt_caching if self.remote_params is not None else None
        caching = setting is True  # explicit breakpoints on the system prompt and the tools
        if setting is None:  # automatic caching (Oumi's default): up to the prompt's last block
            body["cache_control"] = dict(_EPHEMERAL["cache_control"])
        if system is not None:
            body["system"] = [{"type": "text", "text": system, **_EPHEMERAL}] if caching else system
        thinking = self.model_params.model_kwargs.get("thinking")
        if thinking is not None:  # Anthropic's extended thinking object, passed as given
            body["thinking"] = thinking
        body.update(self._sampling_fields(generation))
        if generation.stop_strings:
            body["stop_sequences"] = list(generation.stop_strings)
        guided = generation.guided_decoding
        if guided is not None and guided.kind == "json":
            schema = close_objects(guided.schema_dict() or {})
            body["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
        body.update(tool_fields(conversation, generation))
        user = self.remote_params.user_id if self.remote_params is not None else None
        if user:
            body["metadata"] = {"user_id": user}
        if generation.service_tier is not None:
            body["service_tier"] = generation.service_tier
        if caching and body.get("tools"):
            body["tools"] = [*body["tools"][:-1], {**body["tools"][-1], **_EPHEMERAL}]
        return body

    def build_stream_request(self, conversation: Conversation, generation: GenerationParams) -> HttpRequest:
        return HttpRequest.json(self.url, {**self.build_body(conversation, generation), "stream": True}, self.headers)

    def stream_decoder(self, conversation: Conversation) -> AnthropicStream:
        return AnthropicStream(conversation)

    def parse_reply(self, conversation: Conversation, data: Any) -> Conversation:
        if data.get("type") != "message":
            raise ValueError(f"expected a message object, got type {data.get('type')!r}")
        text, calls, reasoning, update = reply_parts(data["content"], conversation.metadata)
        stop_reason = data.get("stop_reason")
        metadata = {**update, "stop_reason": stop_reason, "model": data.get("model")}
        if data.get("stop_sequence"):
            metadata["stop_sequence"] = data["stop_sequence"]
        tier = (data.get("usage") or {}).get("service_tier")
        if isinstance(tier, str):  # the tier that answered: standard, priority (or batch)
            metadata["service_tier"] = tier
        return conversation.with_reply(
            text,
            metadata,
            usage=_usage(data.get("usage")),
            finish_reason=FinishReason.parse(stop_reason),
            tool_calls=calls,
            reasoning_content=reasoning,
        )


class AnthropicStream:
    """Decoder of one streamed Messages API answer: text deltas are yielded; thinking (with its
    signature) and ``tool_use`` input (``input_json_delta`` pieces) are assembled per content block."""

    def __init__(self, conversation: Conversation) -> None:
        self.conversation = conversation
        self.done = False
        self._blocks: dict[int, dict[str, Any]] = {}
        self._json: dict[int, list[str]] = {}
        self._usage: dict[str, Any] | None = None
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
            if isinstance(message.get("usage"), dict):
                self._usage = dict(message["usage"])
        elif kind == "content_block_start":
            self._blocks[data.get("index", 0)] = dict(data["content_block"])
        elif kind == "content_block_delta":  # some servers leave out the index of a lone text block
            return self._delta(data.get("index", 0), data["delta"])
        elif kind == "content_block_stop" and data.get("index", 0) in self._json:
            index = data.get("index", 0)
            raw = "".join(self._json.pop(index))
            try:
                self._blocks[index]["input"] = json.loads(raw) if raw else {}
            except ValueError:  # a call cut by max_tokens (stop_reason follows): no half call in the answer
                del self._blocks[index]
        elif kind == "message_delta":
            stop = (data.get("delta") or {}).get("stop_reason")
            self._metadata["stop_reason"] = stop
            self._metadata["finish_reason"] = FinishReason.parse(stop)
            # message_delta's usage counts are cumulative: they replace the message_start ones.
            counts = {k: v for k, v in (data.get("usage") or {}).items() if v is not None}
            if counts:
                self._usage = {**(self._usage or {}), **counts}
        elif kind == "message_stop":
            self.done = True
        return ""

    @property
    def finished(self) -> bool:
        return self.done or self._metadata["stop_reason"] is not None

    def _delta(self, index: int, delta: dict[str, Any]) -> str:
        block = self._blocks.setdefault(index, {"type": "text", "text": ""})
        kind = delta.get("type")
        if kind == "text_delta":
            block["text"] = block.get("text", "") + delta["text"]
            return str(delta["text"])
        if kind == "thinking_delta":
            block["thinking"] = block.get("thinking", "") + delta["thinking"]
        elif kind == "signature_delta":
            block["signature"] = block.get("signature", "") + delta["signature"]
        elif kind == "input_json_delta":
            self._json.setdefault(index, []).append(delta["partial_json"])
        return ""

    def result(self) -> Conversation:
        blocks = [self._blocks[i] for i in sorted(self._blocks)]
        text, calls, reasoning, update = reply_parts(blocks, self.conversation.metadata)
        metadata = {**self._metadata, **update}
        return self.conversation.with_reply(
            text, metadata, usage=_usage(self._usage), tool_calls=calls, reasoning_content=reasoning
        )
