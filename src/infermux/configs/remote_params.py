"""Settings of remote engines: where to send requests, with which key, how hard to push."""

from __future__ import annotations

import os
import re
from typing import ClassVar

from pydantic import Field, SecretStr, field_validator, model_validator

from infermux.configs._base import ConfigModel
from infermux.configs.endpoint_params import EndpointParams
from infermux.errors import ConfigError

__all__ = ["RemoteParams"]

_WINDOW = re.compile(r"^\d+[smhd]$")


class RemoteParams(ConfigModel):
    """The SPEC's ``remote_params:`` section. ``api_key`` is a secret: never printed."""

    # Only ``api_url`` (where the answers come from) counts for resume (``user_id`` only labels requests).
    not_fingerprinted: ClassVar[frozenset[str]] = frozenset(
        {
            "api_key", "api_key_env_varname", "max_retries", "retry_backoff_base", "retry_backoff_max",
            "connection_timeout", "num_workers", "politeness_policy", "use_adaptive_concurrency",
            "batch_completion_window", "rate_limit_timeout", "user_id", "requests_per_minute",
            "input_tokens_per_minute", "output_tokens_per_minute", "anthropic_prompt_caching",
            "endpoints", "endpoint_cooldown", "use_provider_limits",
        }
    )  # fmt: skip

    api_url: str | None = None
    """Base URL (``http://host:port`` or ``.../v1``) or full endpoint URL of the server."""
    api_key: SecretStr | None = None
    """API key; prefer ``api_key_env_varname`` or ``"${ENV_VAR}"`` so it stays out of files."""
    api_key_env_varname: str | None = None
    """Environment variable holding the API key."""
    max_retries: int = Field(default=3, ge=0)
    """Retries per request after the first attempt."""
    retry_backoff_base: float = Field(default=1.0, gt=0)
    """First back-off delay in seconds; doubles on each retry (with jitter)."""
    retry_backoff_max: float = Field(default=30.0, gt=0)
    """Longest single back-off delay in seconds."""
    connection_timeout: float = Field(default=20.0, gt=0)
    """Request timeout in seconds."""
    rate_limit_timeout: float = Field(default=300.0, ge=0)
    """Seconds one request keeps waiting out rate limits (429, or 503 with a wait hint) before it fails.
    Rate-limited retries do not use up ``max_retries``; billing and quota errors are never retried."""
    num_workers: int = Field(default=1, ge=1)
    """Concurrent requests."""
    politeness_policy: float = Field(default=0.0, ge=0)
    """Seconds each worker waits between its requests."""
    batch_completion_window: str | None = "24h"
    """Completion window for batch APIs (e.g. ``24h``)."""
    use_adaptive_concurrency: bool = True
    """Lower concurrency on errors and rate limits, raise it back on success (AIMD)."""
    user_id: str | None = None
    """An end-user id sent with each request for the provider's abuse monitoring (OpenAI ``user``,
    Anthropic ``metadata.user_id``)."""
    requests_per_minute: int | None = Field(default=None, ge=1)
    """Most requests started in any 60 s window, job-wide (retries count); None: no limit."""
    input_tokens_per_minute: int | None = Field(default=None, ge=1)
    """Most prompt tokens sent in any 60 s window, job-wide. Tokens are estimated before sending
    (characters / 4 over the request's text, scaled by what the server reported so far) and corrected
    from each reply's usage; None: no limit."""
    output_tokens_per_minute: int | None = Field(default=None, ge=1)
    """Most completion tokens in any 60 s window, job-wide (a request reserves ``max_new_tokens`` until
    replies report usage, then the average completion seen); None: no limit."""
    use_provider_limits: bool = True
    """Pace below the rate limits the provider announces in its reply headers (OpenAI's and
    compatible providers' ``x-ratelimit-*``, Anthropic's ``anthropic-ratelimit-*``): requests, tokens
    and their reset times, read from every reply, so a job slows down before a 429 instead of after.
    The per-minute limits set here win over the announced ones; false: ignore the headers."""
    anthropic_prompt_caching: bool | None = None
    """ANTHROPIC prompt caching. Unset (the default, as in Oumi): automatic caching, a top-level
    ``cache_control: {type: ephemeral}`` that caches each prompt up to its last block (a conversation
    that goes on, or a repeated row, reads it back). ``true``: mark the system prompt (and the last tool,
    when present) instead, for many rows sharing one long system prompt. ``false``: no caching. Cache
    reads and writes are reported in the row's usage and priced at their own rates."""

    endpoints: list[EndpointParams] | None = None
    """Several servers answering the same model (replicas of one ``vllm serve``, say), instead of
    ``api_url``: each row goes to the least busy healthy one (docs/remote.md, "Several servers")."""
    endpoint_cooldown: float = Field(default=10.0, gt=0)
    """Seconds an endpoint that refused connections or answered a burst of 5xx rests before it is tried
    again (doubling while it keeps failing, up to 10 minutes)."""

    @model_validator(mode="after")
    def _one_way_to_the_server(self) -> RemoteParams:
        if self.endpoints is not None:
            if self.api_url:
                raise ValueError("set either api_url (one server) or endpoints (several), not both")
            if not self.endpoints:
                raise ValueError("endpoints is empty: list at least one {url: ...}, or use api_url")
            labels = [e.label for e in self.endpoints]
            twice = sorted({label for label in labels if labels.count(label) > 1})
            if twice:
                raise ValueError(f"endpoints lists {twice[0]} twice; give each endpoint its own url or name")
        return self

    @property
    def server_url(self) -> str | None:
        """Where requests go as the user set it: ``api_url``, else the first endpoint's URL (None: neither)."""
        return self.endpoints[0].url if self.endpoints else self.api_url

    @field_validator("batch_completion_window")
    @classmethod
    def _window(cls, value: str | None) -> str | None:
        if value is not None and not _WINDOW.match(value):
            raise ValueError("batch_completion_window looks like '24h' (a number and s, m, h or d)")
        return value

    def resolve_api_key(self, default_env: str | None = None, *, required: bool = False) -> str | None:
        """The key to send: ``api_key``, else ``api_key_env_varname``'s value, else ``default_env``'s.

        A variable the user named (``api_key_env_varname``) that is unset or empty is an error, not a
        silent request without a key. ``required``: the engine cannot send requests without one (the
        error then does not suggest going without)."""
        if self.api_key is not None and self.api_key.get_secret_value():
            return self.api_key.get_secret_value()
        name = self.api_key_env_varname
        if name:
            if os.environ.get(name):
                return os.environ[name]
            instead = (
                "or set remote_params.api_key"
                if required
                else "or remove api_key_env_varname to send requests without a key"
            )
            raise ConfigError(
                f"remote_params.api_key_env_varname names the environment variable {name}, which is "
                f"{'empty' if name in os.environ else 'not set'}: export {name}=<your key>, {instead}."
            )
        if default_env and os.environ.get(default_env):
            return os.environ[default_env]
        return None
