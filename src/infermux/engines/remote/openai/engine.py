"""REMOTE: any server that speaks OpenAI chat completions (llama.cpp server, vLLM, LM Studio, ...).

The hosted providers (OPENAI, TOGETHER, FIREWORKS, ...; one row each in :mod:`.providers`) and
REMOTE_VLLM are subclasses that only change defaults (URL, key variable, concurrency, supported
parameters) and, where a provider has quirks, :meth:`RemoteInferenceEngine.adjust_body`.

Guided JSON goes out as OpenAI's ``response_format: {"type": "json_schema", ...}``, which vLLM, SGLang,
llama.cpp's ``llama-server`` and the hosted providers understand; llama-cpp-python's own server (0.3)
only knows the older ``{"type": "json_object", "schema": ...}`` form and ignores the constraint.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar

from infermux.configs.generation_params import GenerationParams
from infermux.engines.batch_client import BatchClient
from infermux.engines.capabilities import Capabilities
from infermux.engines.remote.base import RemoteEngine
from infermux.engines.remote.http.transport import HttpRequest
from infermux.engines.remote.openai.batch_api import MAX_BYTES, MAX_REQUESTS, OpenAIBatchClient
from infermux.engines.remote.openai.format import (
    chat_completions_url,
    encode_messages,
    generation_fields,
    reply,
    tool_fields,
)
from infermux.engines.remote.openai.providers import BATCH_CLIENTS, OPENAI_PARAMS, SAMPLE_PARAMS
from infermux.engines.remote.openai.stream import ChatCompletionStream
from infermux.types import Conversation

__all__ = ["OPENAI_PARAMS", "RemoteInferenceEngine"]


class RemoteInferenceEngine(RemoteEngine):
    """Any OpenAI-compatible chat-completions server; the key is optional."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        generation_params=OPENAI_PARAMS | SAMPLE_PARAMS | {"min_p", "stop_token_ids"},
        guided_decoding=frozenset({"json"}),
        images=True,
        streaming=True,
        tools=True,
        batch_api=True,
        notes=("min_p and stop_token_ids are sent as extra fields; servers that do not know them may reject them",),
    )
    requires_api_key = False
    default_num_workers = 8
    provider = "the server"
    #: The provider's batch protocol (a key of :data:`~.providers.BATCH_CLIENTS`).
    batch_protocol: ClassVar[str] = "openai"
    #: Body field that carries ``max_new_tokens``.
    max_tokens_field: ClassVar[str] = "max_tokens"
    #: What one file of OpenAI's Batch API may hold (the provider's limits; a test may lower them).
    batch_max_requests: int = MAX_REQUESTS
    batch_max_bytes: int = MAX_BYTES

    _cached_generation: GenerationParams | None = None
    _cached_fields: dict[str, Any] | None = None

    def endpoint_url(self, api_url: str) -> str:
        return chat_completions_url(api_url)

    def batch_client(self) -> BatchClient | None:
        """The provider's batch API (``batch_protocol``: OpenAI's ``/v1/files`` + ``/v1/batches`` unless the
        provider row names another), where it is offered."""
        if not self.capabilities.batch_api:
            return None
        if self.batch_protocol == "openai":
            return OpenAIBatchClient(self)
        import importlib

        module, name = BATCH_CLIENTS[self.batch_protocol].split(":")
        client: BatchClient = getattr(importlib.import_module(module), name)(self)
        return client

    # ------------------------------------------------------------------ hooks for subclasses
    def served_model_name(self) -> str:
        """The ``model`` field of the body."""
        return self.model_params.model_name

    def adjust_body(self, body: dict[str, Any], generation: GenerationParams) -> dict[str, Any]:
        """Provider quirks, applied once per distinct GenerationParams to the shared fields."""
        return body

    def extra_fields(self, generation: GenerationParams) -> dict[str, Any]:
        """Fields beyond OpenAI's (e.g. vLLM's structured outputs)."""
        return {}

    def encode_messages(self, conversation: Conversation) -> list[dict[str, Any]]:
        return encode_messages(conversation.messages)

    # ------------------------------------------------------------------ the protocol seam
    def _fields(self, generation: GenerationParams) -> dict[str, Any]:
        if self._cached_generation is not generation or self._cached_fields is None:
            supported = self.capabilities.generation_params
            fields = {"model": self.served_model_name()}
            fields.update(generation_fields(generation, supported, max_tokens_field=self.max_tokens_field))
            fields.update(self.extra_fields(generation))
            user = self.remote_params.user_id if self.remote_params is not None else None
            if user:
                fields["user"] = user
            if generation.service_tier is not None and self.capabilities.service_tiers:
                fields["service_tier"] = generation.service_tier
            self._cached_fields = self.adjust_body(fields, generation)
            self._cached_generation = generation
        return self._cached_fields

    def build_body(self, conversation: Conversation, generation: GenerationParams) -> dict[str, Any]:
        body = {"messages": self.encode_messages(conversation)}
        body.update(self._fields(generation))
        if conversation.tools and self.capabilities.tools:  # an engine that cannot do tools does not send them
            body.update(tool_fields(conversation, generation))
        return body

    def parse_reply(self, conversation: Conversation, data: Any) -> Conversation:
        return reply(conversation, data)

    # ------------------------------------------------------------------ streaming (chat)
    #: Ask for token usage in the last streamed chunk (``stream_options.include_usage``).
    stream_usage: ClassVar[bool] = True

    def build_stream_request(self, conversation: Conversation, generation: GenerationParams) -> HttpRequest:
        request = self.build_request(conversation, generation)
        body = json.loads(request.body)
        body["stream"] = True
        if self.stream_usage:
            body["stream_options"] = {"include_usage": True}
        return dataclasses.replace(request, body=json.dumps(body, ensure_ascii=False).encode())

    def stream_decoder(self, conversation: Conversation) -> ChatCompletionStream:
        return ChatCompletionStream(conversation)
