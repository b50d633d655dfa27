"""The base of every HTTP engine: settings, key, URL and transport lifecycle; protocols fill in the rest.

A remote engine subclasses :class:`RemoteEngine`, sets its provider defaults as class attributes
(``default_api_url``, ``api_key_env``, ``requires_api_key``, ``default_num_workers``) and implements
the protocol seam:

* ``endpoint_url(api_url)``: the URL requests go to, from the user's ``api_url`` or the default;
* ``build_headers(api_key)``: the headers of every request (built once);
* ``build_body(conversation, generation)``: the JSON body of one request;
* ``parse_reply(conversation, data)``: the answered conversation from the decoded JSON reply (raise
  ``ValueError``/``KeyError``/``TypeError`` on a malformed reply: it is retried);
* optionally ``error_message(status, body)`` and ``build_request`` (when the URL varies per row);
* optionally, to stream in chat, ``build_stream_request`` and ``stream_decoder`` (see
  :mod:`infermux.engines.remote.http.sse`), with ``Capabilities(streaming=True)``.

Retries, rate limits, concurrency and redaction belong to :mod:`infermux.engines.remote.http.transport`;
resume, ordering and output belong to the batch loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Literal

from infermux.configs.generation_params import GenerationParams
from infermux.configs.remote_params import RemoteParams
from infermux.engines.base import InferenceEngine, StreamEvent
from infermux.engines.health import Health
from infermux.engines.remote.http.endpoints import Endpoint, EndpointPool, EndpointSpec, endpoint_specs
from infermux.engines.remote.http.limits import estimate_tokens
from infermux.engines.remote.http.sse import WHOLE_REPLY, StreamDecoder
from infermux.engines.remote.http.transport import (
    Handler,
    HttpRequest,
    Transport,
    TransportSettings,
    default_error_message,
    redact,
)
from infermux.errors import (
    AuthenticationError,
    ConfigError,
    ErrorKind,
    InfermuxError,
    InputError,
    RemoteError,
    RowError,
    ServerUnreachableError,
)
from infermux.samples import merge_replies, wants_samples
from infermux.types import Conversation

__all__ = ["KeyRule", "ProviderInfo", "RemoteEngine", "SecretHeaders"]

logger = logging.getLogger("infermux.remote")

_NO_TOKENS = (0, 0)


#: When a request needs an API key: always; only for the provider's own API (no ``api_url`` given: another
#: server, such as ``vllm serve``, may take none); or never (a key is sent when there is one).
KeyRule = Literal["required", "required-without-api_url", "optional"]


@dataclasses.dataclass(frozen=True)
class ProviderInfo:
    """What a remote engine's provider is, as data: the docs, ``infermux config check`` and the Ray
    planner read this instead of probing the class's attributes."""

    provider: str  # for messages ("Anthropic", "the server")
    url: str | None  # default ``remote_params.api_url`` (None: the user sets it)
    key_env: str | None  # the variable read for the key
    key_rule: KeyRule
    workers: int  # default ``remote_params.num_workers``

    def key_required(self, api_url: str | None) -> bool:
        """Whether a request needs a key when the user set ``api_url`` (or did not)."""
        return self.key_rule == "required" or (self.key_rule == "required-without-api_url" and not api_url)

    @property
    def key_text(self) -> str:
        """The rule in words (docs/engines.md)."""
        if self.key_rule == "required-without-api_url":
            return f"required for {self.provider}'s own API; optional for another server set in api_url"
        return self.key_rule


class SecretHeaders(dict):  # type: ignore[type-arg]
    """Request headers whose repr hides credential values."""

    _HIDDEN = ("authorization", "api-key", "x-api-key", "x-goog-api-key")

    def __repr__(self) -> str:
        shown = {k: ("***" if k.lower() in self._HIDDEN else v) for k, v in self.items()}
        return f"SecretHeaders({shown!r})"

    __str__ = __repr__


def request_chars(conversation: Conversation) -> int:
    """Characters of a request's text (every message; images count nothing), for token estimates."""
    return sum(len(message.text) for message in conversation.messages)


def reported_usage(result: Conversation) -> tuple[int | None, int | None]:
    """(prompt, completion) tokens from an answered row's ``metadata["usage"]`` (None where absent)."""
    usage = result.usage
    return (None, None) if usage is None else (usage.prompt_tokens, usage.completion_tokens)


class RemoteEngine(InferenceEngine):
    """Shared behaviour of engines that answer over HTTP. See the module docstring for the seam."""

    #: Where requests go when ``remote_params.api_url`` is not set (None: the user must set it).
    default_api_url: ClassVar[str | None] = None
    #: Environment variable read for the key when neither ``api_key`` nor ``api_key_env_varname`` is set.
    api_key_env: ClassVar[str | None] = None
    #: Whether a request without a key is pointless (fail at construction, naming the variable).
    requires_api_key: ClassVar[bool] = True
    #: Concurrent requests when ``remote_params.num_workers`` is not set.
    default_num_workers: ClassVar[int] = 8
    #: Human name of the provider, for messages.
    provider: ClassVar[str] = "the server"
    #: The API has no ``n``: ``generation.n > 1`` sends n requests per row (see :mod:`infermux.samples`).
    repeat_for_n: ClassVar[bool] = False
    #: An in-process stand-in for the server (tests): every request of this engine, batch APIs included,
    #: goes to it instead of a socket (see :mod:`infermux.engines.remote.http.transport`).
    transport_handler: Handler | None = None

    @classmethod
    def provider_info(cls) -> ProviderInfo:
        """The class's provider defaults as one typed row (the key rule follows from ``requires_api_key``
        and ``api_key_env``)."""
        rule: KeyRule = "required" if cls.requires_api_key else "optional"
        if not cls.requires_api_key and cls.api_key_env is not None:
            rule = "required-without-api_url"
        return ProviderInfo(cls.provider, cls.default_api_url, cls.api_key_env, rule, cls.default_num_workers)

    def setup(self) -> None:
        super().setup()
        params = self.remote_params or RemoteParams()
        overrides: dict[str, Any] = {}
        if "num_workers" not in params.model_fields_set:
            overrides["num_workers"] = self.default_num_workers
        self.settings = TransportSettings.from_remote_params(params, **overrides)
        # The provider's own API (no api_url given) needs its key even where another server may not.
        server = params.server_url
        required = self.provider_info().key_required(server)
        api_key = params.resolve_api_key(self.api_key_env, required=required)
        # Several servers (remote_params.endpoints): requests are built for the first and sent by a pool.
        self._endpoints: list[EndpointSpec] = []
        if params.endpoints:
            self._endpoints = endpoint_specs(params, self.settings, api_key, self.endpoint_url)
        keys = [spec.key for spec in self._endpoints] or [api_key]
        if self.requires_api_key and not all(keys):
            raise AuthenticationError(self._missing_key_message(params), kind="authentication")
        self._secrets: tuple[str, ...] = tuple(dict.fromkeys(k for k in (api_key, *keys) if k))
        api_key = keys[0]
        api_url = server or self.default_api_url
        # Without a URL the engine is still built (a config passed to ``infer`` may bring one, as in
        # Oumi); a job on this engine itself stops before sending anything (``check_ready``).
        try:
            self.url = self.endpoint_url(api_url) if api_url else ""
        except ValueError as exc:
            raise ConfigError(f"remote_params.api_url: {exc}") from None
        self.headers = SecretHeaders(self.build_headers(api_key))
        self._transport: Transport[Conversation] | EndpointPool[Conversation] | None = None

    def _missing_key_message(self, params: RemoteParams) -> str:
        names = [n for n in (params.api_key_env_varname, self.api_key_env) if n]
        where = " or ".join(f"the {n} environment variable" for n in dict.fromkeys(names))
        return (
            f"{self.name} needs an API key for {self.provider}: set {where or 'remote_params.api_key'}"
            f"{' (or remote_params.api_key)' if where else ''}."
        )

    # ------------------------------------------------------------------ the protocol seam
    def endpoint_url(self, api_url: str) -> str:
        return api_url

    def build_headers(self, api_key: str | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        return headers

    def build_body(self, conversation: Conversation, generation: GenerationParams) -> dict[str, Any]:
        raise NotImplementedError

    def parse_reply(self, conversation: Conversation, data: Any) -> Conversation:
        raise NotImplementedError

    def error_message(self, status: int, body: bytes) -> str:
        return default_error_message(status, body)

    def build_request(self, conversation: Conversation, generation: GenerationParams) -> HttpRequest:
        return HttpRequest.json(self.url, self.build_body(conversation, generation), self.headers)

    # ------------------------------------------------------------------ wiring to the batch loop
    def chunk_size(self, generation: GenerationParams) -> int:
        return 1

    def max_concurrency(self) -> int:
        if self._endpoints:
            return sum(spec.settings.num_workers for spec in self._endpoints)
        return self.settings.num_workers

    def check_ready(self) -> None:
        """Raise :class:`ConfigError` when no ``remote_params.api_url`` (and no default) was given."""
        if not self.url:
            raise ConfigError(self.missing_url_message(self.label))

    @classmethod
    def missing_url_message(cls, name: str) -> str:
        """What a job on this engine says when it has no URL to send to (also ``config check``'s)."""
        return (
            f"{name} needs remote_params.api_url: the server's base URL (e.g. "
            "http://localhost:8000/v1) or its full endpoint URL."
        )

    async def _open(self) -> None:
        self.check_ready()
        if self._transport is None:
            transport = self._pool() if self._endpoints else self._new_transport(self.settings)
            await transport.__aenter__()
            self._transport = transport

    def _new_transport(self, settings: TransportSettings) -> Transport[Conversation]:
        hint = f"Check the key in {self.api_key_env} (or remote_params.api_key)." if self.api_key_env else ""
        return Transport(settings, secrets=self._secrets, auth_hint=hint, error_message=self.error_message,
                         handler=self.transport_handler)  # fmt: skip

    def _pool(self) -> EndpointPool[Conversation]:
        """The transports of ``remote_params.endpoints`` as one (see :mod:`~.http.endpoints`)."""
        cooldown = (self.remote_params or RemoteParams()).endpoint_cooldown
        endpoints, first_key = [], self._endpoints[0].key
        for spec in self._endpoints:
            headers = self.headers if spec.key == first_key else SecretHeaders(self.build_headers(spec.key))
            transport = self._new_transport(spec.settings)
            endpoints.append(Endpoint(spec.label, spec.url, headers, transport, spec.weight, Health(cooldown)))
        backoff = (self.settings.retry_backoff_base, self.settings.retry_backoff_max)
        return EndpointPool(endpoints, base_url=self.url, base_headers=self.headers,
                            max_retries=self.settings.max_retries, backoff=backoff, mark=_mark_endpoint)  # fmt: skip

    async def _close(self) -> None:
        if self._transport is not None:
            transport, self._transport = self._transport, None
            await transport.__aexit__(None, None, None)

    async def _infer_chunk(
        self, conversations: list[Conversation], generation: GenerationParams
    ) -> list[Conversation | RowError]:
        transport = self._transport
        assert transport is not None, "the batch loop starts the job before inferring"
        results: list[Conversation | RowError] = []
        for conversation in conversations:
            try:
                request = self.build_request(conversation, generation)
            except (InfermuxError, ValueError, OSError) as exc:
                error = RowError.from_exception(exc, ErrorKind.INVALID_INPUT)
                results.append(dataclasses.replace(error, message=redact(error.message, self._secrets)))
                continue
            try:
                parse = functools.partial(self.parse_reply, conversation)
                tokens = (  # estimated only when per-minute token limits are set
                    (estimate_tokens(request_chars(conversation)), generation.max_new_tokens)
                    if transport.per_minute_limits
                    else _NO_TOKENS
                )
                if self.repeat_for_n and generation.n > 1:
                    # A row is done only when all n answers are in: one failure fails the row.
                    send = functools.partial(transport.send, request, parse, tokens=tokens, usage=reported_usage)
                    answers = await asyncio.gather(*(send() for _ in range(generation.n)))
                    results.append(merge_replies(conversation, answers, generation))
                else:
                    results.append(await transport.send(request, parse, tokens=tokens, usage=reported_usage))
            except RemoteError as exc:
                self._stop_if_unreachable(exc)
                results.append(exc.to_row_error())
            self._reached = True
        return results

    def _stop_if_unreachable(self, exc: RemoteError) -> None:
        """Raise :class:`ServerUnreachableError` when ``exc`` is a failure to connect (after the retries) and
        no request of this engine ever reached the server: a wrong port or a server not started would
        otherwise fail every row of the job, one by one, the same way."""
        if getattr(self, "_reached", False) or exc.kind != ErrorKind.CONNECTION_ERROR:
            self._reached = True
            return
        if "ClientConnector" not in str(exc):  # a stream that broke off: the server was there
            return
        where, check = self.url, "Is the server running, and is remote_params.api_url right?"
        if self._endpoints:
            where = "any of remote_params.endpoints (" + ", ".join(spec.label for spec in self._endpoints) + ")"
            check = "Are the servers running, and are the endpoints' URLs right?"
        raise ServerUnreachableError(
            f"cannot reach {where} ({exc}). {check} Nothing was answered; rerun the same command once it is reachable.",
            kind=ErrorKind.CONNECTION_ERROR,
            retryable=True,
        )

    # ------------------------------------------------------------------ streaming (chat)
    def build_stream_request(self, conversation: Conversation, generation: GenerationParams) -> HttpRequest:
        """The request for a streamed answer. Protocols that stream implement it, together with
        :meth:`stream_decoder`, and declare ``Capabilities(streaming=True)``."""
        raise NotImplementedError

    def stream_decoder(self, conversation: Conversation) -> StreamDecoder:
        """The decoder of this protocol's streamed events."""
        raise NotImplementedError

    async def _stream(self, conversation: Conversation, generation: GenerationParams) -> AsyncIterator[StreamEvent]:
        """Stream one answer over server-sent events (engines without streaming answer at once)."""
        # Several answers or log-probabilities come whole: a stream shows one answer's text.
        if not self.capabilities.streaming or wants_samples(generation):
            async for whole in super()._stream(conversation, generation):
                yield whole
            return
        assert self._transport is not None
        try:
            request = self.build_stream_request(conversation, generation)
        except (ValueError, OSError) as exc:
            raise InputError(redact(str(exc), self._secrets)) from None
        decoder = self.stream_decoder(conversation)
        tokens = (estimate_tokens(request_chars(conversation)), generation.max_new_tokens)
        answered_by: list[str] = []
        if isinstance(self._transport, EndpointPool):
            events = self._transport.stream(request, tokens=tokens, answered_by=answered_by)
        else:
            events = self._transport.stream(request, tokens=tokens)
        answered: Conversation | None = None
        received = 0
        try:
            async for event in events:
                try:
                    if event.event == WHOLE_REPLY:  # the server ignored the stream flag: one JSON answer
                        answered = self.parse_reply(conversation, json.loads(event.data))
                        break
                    delta = decoder.feed(event)
                except (ValueError, KeyError, TypeError, IndexError) as exc:
                    raise RemoteError(
                        f"unparsable streamed event ({type(exc).__name__}: {exc}): {event.data[:200]!r}",
                        kind="malformed_response",
                    ) from None
                if delta:
                    received += len(delta)
                    yield StreamEvent(delta=delta)
                if decoder.done:
                    break
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        if answered is not None:
            for label in answered_by:
                _mark_endpoint(answered, label)
            if answered.last_message.text:
                yield StreamEvent(delta=answered.last_message.text)
            yield StreamEvent(conversation=answered, metadata=dict(answered.metadata))
            return
        if not decoder.finished:
            raise RemoteError(
                f"the answer stream ended before the answer did: no finish reason and no end-of-stream marker "
                f"from {self.provider} after {received} characters. The text shown is incomplete.",
                retryable=True,
                kind="connection_error",
            )
        result = decoder.result()
        for label in answered_by:
            _mark_endpoint(result, label)
        yield StreamEvent(conversation=result, metadata=dict(result.metadata))

    @property
    def secrets(self) -> tuple[str, ...]:
        """The keys this engine sends, for whoever shows its errors to redact (never logged or shown)."""
        return self._secrets

    def __repr__(self) -> str:
        if self._endpoints:
            urls = [redact(spec.url, self._secrets) for spec in self._endpoints]
            return f"{self.name}(model={self.model_params.model_name!r}, endpoints={urls!r})"
        return f"{self.name}(model={self.model_params.model_name!r}, url={redact(self.url, self._secrets)!r})"


def _mark_endpoint(result: Any, label: str) -> None:
    """Record in an answer which endpoint of a pool gave it."""
    if isinstance(result, Conversation):
        result.metadata["endpoint"] = label
