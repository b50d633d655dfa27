"""Several servers behind one remote engine: least-busy routing, cooldowns and failover.

An :class:`EndpointPool` stands where a :class:`~infermux.engines.remote.http.transport.Transport`
stands (same ``send`` and ``stream``) and holds one transport per endpoint, each with that server's own
workers, politeness and per-minute limits (``remote_params.endpoints``).

* **Routing.** A request goes to the usable endpoint with the fewest requests in flight for its size:
  ``(in flight + 1) / (its current concurrency × weight)``, so a server with twice the workers, or
  ``weight: 2``, takes twice the rows, and a slow server (its requests pile up) takes fewer.
* **Health** (:class:`Health`). An endpoint that refuses a connection rests at once; one that fails
  ``BURST`` requests in a row (5xx, dropped connections, timeouts, unparsable replies) rests too. It rests
  ``remote_params.endpoint_cooldown`` seconds, then one request probes it: a success makes it healthy
  again, a failure doubles the rest (up to 10 minutes).
* **Failover.** The endpoint transports give transient failures back at once (``fail_fast``): the pool
  sends the request again elsewhere, so the rows in flight at a server that dies are answered by the
  others. A request gives up after ``max_retries`` + one more try per endpoint; when every endpoint rests,
  it waits for a probe (each wait counts as a try). Rate limits are waited out at the endpoint that
  answered them; other failures (a bad request, a missing key, an exhausted quota) are the row's answer.
* Every answer is marked with the label of the endpoint that gave it (``metadata["endpoint"]``): its
  ``name`` or URL, never a key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from infermux.engines.health import BURST, Health
from infermux.engines.remote.http.sse import SseEvent
from infermux.engines.remote.http.transport import HttpRequest, Transport, TransportSettings
from infermux.errors import ConfigError, RemoteError

if TYPE_CHECKING:
    from infermux.configs.remote_params import RemoteParams

__all__ = ["BURST", "Endpoint", "EndpointPool", "EndpointSpec", "Health", "endpoint_specs", "server_fault"]

T = TypeVar("T")

_REFUSED = ("ClientConnector", "Cannot connect", "Connection refused")


def server_fault(exc: RemoteError) -> bool:
    """Whether ``exc`` says the server is down or failing (another server may answer), not that the
    request was wrong or the account is out of quota."""
    kind = str(exc.kind)
    if kind in ("connection_error", "timeout", "malformed_response"):
        return True
    return kind == "http_error" and (exc.status is None or exc.status >= 500)


def _refused(exc: RemoteError) -> bool:
    return str(exc.kind) == "connection_error" and any(mark in str(exc) for mark in _REFUSED)


@dataclasses.dataclass(eq=False)
class Endpoint:
    """One server of the pool: its label, request URL, headers (its key) and transport."""

    label: str
    url: str
    headers: Mapping[str, str] = dataclasses.field(repr=False)
    transport: Transport[Any] = dataclasses.field(repr=False)
    weight: float = 1.0
    health: Health = dataclasses.field(default_factory=lambda: Health(10.0))
    in_flight: int = 0
    answered: int = 0

    def load(self) -> float:
        return (self.in_flight + 1) / (max(self.transport.limiter.limit, 1.0) * self.weight)


class EndpointPool(Generic[T]):
    """Transports to several servers used as one (see the module docstring)."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        base_url: str,
        base_headers: Mapping[str, str],
        max_retries: int,
        backoff: tuple[float, float] = (1.0, 30.0),
        mark: Callable[[Any, str], None] | None = None,
    ) -> None:
        self.endpoints = list(endpoints)
        self._base_url = base_url  # the URL (and headers) requests are built with; each endpoint swaps in its own
        self._base_headers = base_headers
        self._limit = max_retries + len(self.endpoints)
        self._backoff = backoff
        self._mark = mark
        self.per_minute_limits = any(e.transport.per_minute_limits for e in self.endpoints)

    def __repr__(self) -> str:
        return f"EndpointPool({[e.label for e in self.endpoints]!r})"

    @property
    def stats(self) -> dict[str, int]:
        """The transports' counters, summed."""
        total: dict[str, int] = {}
        for endpoint in self.endpoints:
            for key, value in endpoint.transport.stats.items():
                total[key] = total.get(key, 0) + value
        return total

    async def __aenter__(self) -> EndpointPool[T]:
        for endpoint in self.endpoints:
            await endpoint.transport.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for endpoint in self.endpoints:
            await endpoint.transport.__aexit__(None, None, None)

    # ------------------------------------------------------------------ choosing
    def _pick(self, avoid: Endpoint | None) -> Endpoint | None:
        now = time.monotonic()
        usable = [e for e in self.endpoints if e.health.usable(now)]
        if avoid is not None and len(usable) > 1 and avoid in usable:
            usable.remove(avoid)
        return min(usable, key=Endpoint.load, default=None)

    async def _choose(self, avoid: Endpoint | None, tries: list[int]) -> Endpoint:
        """The endpoint for the next try; waits while every endpoint rests (each rest waited counts as a
        try in ``tries[0]``: raises ``RemoteError`` once they run out)."""
        while True:
            endpoint = self._pick(avoid)
            if endpoint is not None:
                endpoint.health.begin(time.monotonic())
                return endpoint
            now = time.monotonic()
            resting = [e.health.rest_until for e in self.endpoints if e.health.rest_until > now]
            if len(resting) == len(self.endpoints):  # all rest: wait for the first to be probed
                tries[0] += 1
                if tries[0] > self._limit:
                    raise RemoteError(
                        "every endpoint is resting after failures "
                        f"({', '.join(e.label for e in self.endpoints)}); none answered",
                        retryable=True,
                        kind="connection_error",
                    )
                await asyncio.sleep(min(resting) - now + random.uniform(0.0, 0.05))
            else:  # a probe is out: its answer decides
                await asyncio.sleep(0.02)

    def _retarget(self, request: HttpRequest, endpoint: Endpoint) -> HttpRequest:
        url = request.url
        if url.startswith(self._base_url):
            url = endpoint.url + url[len(self._base_url) :]
        headers = request.headers
        if endpoint.headers is not self._base_headers:
            headers = {**request.headers, **endpoint.headers}
        if url is request.url and headers is request.headers:
            return request
        return dataclasses.replace(request, url=url, headers=headers)

    def _failed(self, endpoint: Endpoint, exc: RemoteError) -> bool:
        """Record ``exc`` at ``endpoint``; whether another try may help (a server fault)."""
        endpoint.in_flight -= 1
        if not server_fault(exc):
            endpoint.health.succeeded()  # it answered: the server is up, the request is the problem
            return False
        endpoint.health.failed(down=_refused(exc))
        return True

    async def _retry_after(self, endpoint: Endpoint, exc: RemoteError, tries: list[int]) -> None:
        """Record ``exc`` at ``endpoint``; return when another try may help, else raise ``exc``. Backs off
        first when no other endpoint is usable (the same one would be tried again)."""
        if not self._failed(endpoint, exc):
            raise exc
        tries[0] += 1
        if tries[0] > self._limit:
            raise exc
        if self._pick(endpoint) in (None, endpoint):
            base, most = self._backoff
            await asyncio.sleep(random.uniform(0.0, min(most, base * 2.0 ** max(tries[0] - 1, 0))))

    @staticmethod
    def _answered(endpoint: Endpoint) -> None:
        endpoint.in_flight -= 1
        endpoint.health.succeeded()
        endpoint.answered += 1

    # ------------------------------------------------------------------ the Transport surface
    async def send(
        self,
        request: HttpRequest,
        parse: Callable[[Any], T],
        *,
        raw: bool = False,
        tokens: tuple[int, int] = (0, 0),
        usage: Callable[[T], tuple[int | None, int | None]] | None = None,
    ) -> T:
        """:meth:`Transport.send` at the least busy usable endpoint, again elsewhere after a server fault."""
        tries = [0]
        last: Endpoint | None = None
        error: RemoteError | None = None
        while True:
            try:
                endpoint = await self._choose(last, tries)
            except RemoteError:
                raise error or RemoteError("no endpoint answered", kind="connection_error") from None
            endpoint.in_flight += 1
            try:
                result = await endpoint.transport.send(
                    self._retarget(request, endpoint), parse, raw=raw, tokens=tokens, usage=usage
                )
            except RemoteError as exc:
                error = exc
                await self._retry_after(endpoint, exc, tries)
                last = endpoint
                continue
            except BaseException:
                endpoint.in_flight -= 1
                endpoint.health.abandoned()
                raise
            self._answered(endpoint)
            if self._mark is not None:
                self._mark(result, endpoint.label)
            return result

    async def stream(
        self, request: HttpRequest, *, tokens: tuple[int, int] = (0, 0), answered_by: list[str] | None = None
    ) -> AsyncIterator[SseEvent]:
        """:meth:`Transport.stream` at the least busy usable endpoint; a failure before the first event is
        tried elsewhere, a stream that breaks once shown is the caller's error. The endpoint's label is
        appended to ``answered_by``."""
        tries = [0]
        last: Endpoint | None = None
        while True:
            endpoint = await self._choose(last, tries)
            endpoint.in_flight += 1
            started = False
            events = endpoint.transport.stream(self._retarget(request, endpoint), tokens=tokens)
            try:
                async for event in events:
                    if not started:
                        started = True
                        if answered_by is not None:
                            answered_by.append(endpoint.label)
                    yield event
            except RemoteError as exc:
                if started:  # what was shown cannot be taken back
                    endpoint.in_flight -= 1
                    raise
                await self._retry_after(endpoint, exc, tries)
                last = endpoint
                continue
            except BaseException:
                endpoint.in_flight -= 1
                endpoint.health.abandoned()
                raise
            finally:
                await events.aclose()  # type: ignore[attr-defined]
            self._answered(endpoint)
            return


@dataclasses.dataclass(frozen=True)
class EndpointSpec:
    """An endpoint as configured, before its transport is opened."""

    label: str
    url: str  # where requests go (the engine's ``endpoint_url`` of the configured URL)
    key: str | None = dataclasses.field(repr=False)
    settings: TransportSettings
    weight: float = 1.0


def endpoint_specs(
    params: RemoteParams, settings: TransportSettings, key: str | None, endpoint_url: Callable[[str], str]
) -> list[EndpointSpec]:
    """The endpoints of ``params.endpoints``: each one's URL, key (its own, else ``key``) and transport
    settings (its own throughput fields, else those of ``settings``)."""
    specs = []
    for i, item in enumerate(params.endpoints or ()):
        where = f"remote_params.endpoints[{i}]"
        own = item.api_key.get_secret_value() if item.api_key is not None else None
        if not own and item.api_key_env:
            own = os.environ.get(item.api_key_env)
            if not own:
                raise ConfigError(
                    f"{where}.api_key_env names the environment variable {item.api_key_env}, which is "
                    f"{'empty' if item.api_key_env in os.environ else 'not set'}: export "
                    f"{item.api_key_env}=<the key of {item.label}>, or remove api_key_env to use "
                    "remote_params' key."
                )
        try:
            url = endpoint_url(item.url)
        except ValueError as exc:
            raise ConfigError(f"{where}.url: {exc}") from None
        own_settings = dataclasses.replace(
            settings,
            num_workers=item.num_workers or settings.num_workers,
            politeness_policy=(
                item.politeness_policy if item.politeness_policy is not None else settings.politeness_policy
            ),
            requests_per_minute=item.requests_per_minute or settings.requests_per_minute,
            input_tokens_per_minute=item.input_tokens_per_minute or settings.input_tokens_per_minute,
            output_tokens_per_minute=item.output_tokens_per_minute or settings.output_tokens_per_minute,
            fail_fast=True,
        )
        specs.append(EndpointSpec(item.label, url, own or key, own_settings, item.weight))
    return specs
