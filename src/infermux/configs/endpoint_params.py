"""One server of a remote engine that spreads its rows over several (``remote_params.endpoints``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, SecretStr

from infermux.configs._base import ConfigModel

__all__ = ["EndpointParams"]


class EndpointParams(ConfigModel):
    """An item of ``remote_params.endpoints``: a server answering the same model as the others.

    Unset throughput fields take the value of the same field in ``remote_params`` (so ``num_workers: 16``
    there gives every endpoint 16 workers); each endpoint keeps its own limits (a per-minute limit here is
    this server's, not the job's). None of these fields count for resume: any replica may answer a row.
    """

    not_fingerprinted: ClassVar[frozenset[str]] = frozenset(
        {
            "url", "name", "api_key", "api_key_env", "num_workers", "politeness_policy", "requests_per_minute",
            "input_tokens_per_minute", "output_tokens_per_minute", "weight",
        }
    )  # fmt: skip

    url: str = Field(min_length=1)
    """Base URL (``http://host:port`` or ``.../v1``) or full endpoint URL of this server."""
    name: str | None = None
    """What rows record in ``metadata["endpoint"]`` (default: the URL)."""
    api_key_env: str | None = None
    """Environment variable holding this server's key (default: the key of ``remote_params``)."""
    api_key: SecretStr | None = None
    """This server's key; prefer ``api_key_env`` so it stays out of files (Ray jobs fill it in)."""
    num_workers: int | None = Field(default=None, ge=1)
    """Concurrent requests to this server (default ``remote_params.num_workers``)."""
    politeness_policy: float | None = Field(default=None, ge=0)
    """Seconds each of this server's workers waits between its requests."""
    requests_per_minute: int | None = Field(default=None, ge=1)
    """Most requests started at this server in any 60 s window."""
    input_tokens_per_minute: int | None = Field(default=None, ge=1)
    """Most prompt tokens sent to this server in any 60 s window."""
    output_tokens_per_minute: int | None = Field(default=None, ge=1)
    """Most completion tokens from this server in any 60 s window."""
    weight: float = Field(default=1.0, gt=0)
    """How much fuller than the others this endpoint is kept: rows go to the endpoint with the least
    ``requests in flight / (workers × weight)``, so with equal workers a weight-2 endpoint gets more rows
    (up to its ``num_workers`` at once)."""

    @property
    def label(self) -> str:
        """The name rows record: ``name``, else the URL."""
        return self.name or self.url
