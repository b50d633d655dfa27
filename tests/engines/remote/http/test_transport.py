"""The shared transport against real HTTP servers on 127.0.0.1 (stub server, fault proxy), and, where the
point is the retry policy rather than the socket, against an in-process handler (:mod:`.handlers`)."""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import json
import time
import urllib.request
from typing import Any

import pytest

from infermux.engines.remote.http.transport import (
    AimdLimiter,
    HttpRequest,
    Transport,
    TransportSettings,
    _Attempt,
    parse_retry_hint,
    redact,
)
from infermux.errors import AuthenticationError, RemoteError
from tests.engines.remote.handlers import EchoHandler
from tests.servers import fault_proxy, stub_server

IN_PROCESS = "http://in-process.invalid/v1/chat/completions"  # never resolved: the handler answers


def _get(url: str) -> Any:
    with urllib.request.urlopen(url) as resp:
        return json.loads(resp.read())


def _body(text: str) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}]}


def _content(data: Any) -> str:
    return str(data["choices"][0]["message"]["content"])


async def _send_all(url: str, texts: list[str], settings: TransportSettings, **kw: Any) -> list[Any]:
    headers = kw.pop("headers", {"Content-Type": "application/json"})
    async with Transport(settings, **kw) as transport:

        async def one(text: str) -> Any:
            try:
                return await transport.send(HttpRequest.json(url, _body(text), headers), _content)
            except RemoteError as exc:
                return exc

        return await asyncio.gather(*(one(t) for t in texts))


@pytest.fixture(scope="module")
def stub() -> Any:
    with stub_server("--require-key", "sk-test-SECRET-0123456789") as url:
        yield url


# ---------------------------------------------------------------------- hints and helpers


def test_retry_after_seconds_and_ms() -> None:
    assert parse_retry_hint({"Retry-After": "3"}) == 3.0
    assert parse_retry_hint({"retry-after-ms": "250", "Retry-After": "3"}) == 0.25
    assert parse_retry_hint({}) is None
    assert parse_retry_hint({"Retry-After": "soon"}) is None


def test_retry_after_http_date() -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    hint = parse_retry_hint({"Retry-After": when})
    assert hint is not None and 27 <= hint <= 31


def test_ratelimit_reset_prefers_the_exhausted_limit() -> None:
    headers = {
        "x-ratelimit-reset-requests": "20ms",
        "x-ratelimit-reset-tokens": "6m0s",
        "x-ratelimit-remaining-requests": "12",
        "x-ratelimit-remaining-tokens": "0",
    }
    assert parse_retry_hint(headers) == 360.0
    headers["x-ratelimit-remaining-tokens"] = "100"
    assert parse_retry_hint(headers) == pytest.approx(0.02)
    assert parse_retry_hint({"x-ratelimit-reset-requests": "1.5s"}) == 1.5


def test_redact_replaces_every_occurrence() -> None:
    assert redact("key sk-abc123 and sk-abc123", ["sk-abc123"]) == "key *** and ***"
    assert redact("nothing here", ["", "sk-abc123"]) == "nothing here"


def test_aimd_starts_at_the_maximum_halves_once_per_cooldown_and_creeps_back() -> None:
    limiter = AimdLimiter(16, cooldown_s=60)
    assert limiter.limit == 16
    limiter.on_overload()
    limiter.on_overload()  # inside the cool-down: ignored
    assert limiter.limit == 8
    for _ in range(8):
        limiter.on_success()
    assert limiter.limit == pytest.approx(9.0, abs=0.1)
    fixed = AimdLimiter(4, adaptive=False)
    fixed.on_overload()
    assert fixed.limit == 4


def test_politeness_keeps_a_gap_between_requests_of_one_slot() -> None:
    limiter = AimdLimiter(1, adaptive=False, politeness=0.2)
    starts: list[float] = []

    async def job() -> None:
        await limiter.acquire()
        starts.append(time.monotonic())
        limiter.release()

    async def main() -> None:
        await asyncio.gather(*(job() for _ in range(3)))

    asyncio.run(main())
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(gaps) == 2 and min(gaps) >= 0.19


def test_aimd_limits_requests_in_flight() -> None:
    limiter = AimdLimiter(2, adaptive=False)
    peak = 0

    async def job() -> None:
        nonlocal peak
        await limiter.acquire()
        peak = max(peak, limiter.in_flight)
        await asyncio.sleep(0.01)
        limiter.release()

    async def main() -> None:
        await asyncio.gather(*(job() for _ in range(10)))

    asyncio.run(main())
    assert peak == 2 and limiter.in_flight == 0


# ---------------------------------------------------------------------- against the stub server


def _auth(key: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}


def test_send_returns_the_parsed_reply(stub: str) -> None:
    url = stub + "/v1/chat/completions"
    out = asyncio.run(
        _send_all(url, ["a", "b"], TransportSettings(num_workers=2), headers=_auth("sk-test-SECRET-0123456789"))
    )
    assert out == ["echo: a", "echo: b"]


def test_401_is_not_retried_and_the_key_is_redacted(stub: str) -> None:
    url = stub + "/v1/chat/completions"
    before = _get(stub + "/_stub/stats")["requests"]
    wrong = "sk-wrong-KEY-9876543210"
    (err,) = asyncio.run(
        _send_all(
            url,
            ["x"],
            TransportSettings(max_retries=5),
            headers=_auth(wrong),
            secrets=[wrong],
            auth_hint="Check OPENAI_API_KEY.",
        )
    )
    assert isinstance(err, AuthenticationError)
    assert err.status == 401 and not err.retryable
    assert wrong not in str(err) and "***" in str(err) and "OPENAI_API_KEY" in str(err)
    assert _get(stub + "/_stub/stats")["requests"] == before + 1


def test_400_fails_the_row_with_the_servers_message_without_retry(stub: str) -> None:
    url = stub + "/v1/chat/completions"
    before = _get(stub + "/_stub/stats")["requests"]

    async def go() -> RemoteError:
        async with Transport(TransportSettings(max_retries=5)) as transport:
            request = HttpRequest.json(url, {"model": "m"}, _auth("sk-test-SECRET-0123456789"))
            with pytest.raises(RemoteError) as info:
                await transport.send(request, _content)
            return info.value

    err = asyncio.run(go())
    assert err.status == 400 and not err.retryable and "'messages' is required" in str(err)
    assert _get(stub + "/_stub/stats")["requests"] == before + 1


# ---------------------------------------------------------------------- against the fault proxy


@pytest.fixture(scope="module")
def upstream() -> Any:
    with stub_server() as url:
        yield url


def test_rate_limits_do_not_use_up_max_retries() -> None:
    # Every body is answered 429 three times (Retry-After as an HTTP date), then passes.
    handler = EchoHandler(faults=(429,), max_faults_per_body=3, retry_after="date:0")
    settings = TransportSettings(num_workers=4, max_retries=0)
    out = asyncio.run(_send_all(IN_PROCESS, ["p", "q"], settings, handler=handler))
    assert out == ["echo: p", "echo: q"]
    assert handler.served == {"429": 6}


def test_retry_after_is_waited_out_before_the_retry(upstream: str) -> None:
    with fault_proxy(
        upstream, "--fault-rate", "1", "--faults", "429", "--retry-after", "1", "--max-faults-per-body", "1"
    ) as proxy:
        start = time.monotonic()
        out = asyncio.run(_send_all(proxy + "/v1/chat/completions", ["w"], TransportSettings(retry_backoff_base=0.01)))
        assert out == ["echo: w"]
        assert time.monotonic() - start >= 1.0  # the server asked for a second; a lower bound cannot flake


def test_each_fault_kind_is_retried_until_success(upstream: str) -> None:
    kinds = "500,503,drop,timeout,truncate,slow"
    with fault_proxy(
        upstream, "--fault-rate", "1", "--faults", kinds, "--max-faults-per-body", "2", "--hang-s", "3", "--seed", "7"
    ) as proxy:
        settings = TransportSettings(num_workers=8, max_retries=2, connection_timeout=1.0, retry_backoff_base=0.01)
        texts = [f"row {i}" for i in range(24)]
        out = asyncio.run(_send_all(proxy + "/v1/chat/completions", texts, settings))
        assert out == [f"echo: {t}" for t in texts]
        seen = set(_get(proxy + "/_proxy/stats")["faults"])
        assert {"500", "503", "drop", "timeout", "truncate"} <= seen


def test_retries_give_up_after_max_retries_with_a_retryable_error(upstream: str) -> None:
    with fault_proxy(upstream, "--fault-rate", "1", "--faults", "500") as proxy:
        settings = TransportSettings(max_retries=2, retry_backoff_base=0.01)
        (err,) = asyncio.run(_send_all(proxy + "/v1/chat/completions", ["z"], settings))
        assert isinstance(err, RemoteError) and err.retryable and err.status == 500
        assert "gave up after 3 failed attempts" in str(err)
        assert _get(proxy + "/_proxy/stats")["requests"] == 3


def test_hintless_rate_limits_back_off_on_the_jobs_streak_and_pause_every_worker() -> None:
    transport: Transport[Any] = Transport(TransportSettings(retry_backoff_base=0.1, retry_backoff_max=30))
    limited = _Attempt("rate_limited", "HTTP 429", status=429, retry=True, rate_limited=True)
    transport._rate_streak = 5
    delay = transport._delay(limited, 0)
    assert 0.8 <= delay <= 1.6  # 0.1 × 2^4, times 0.5-1
    assert transport._resume_at > 0  # shared pause
    transport._rate_streak = 40
    assert transport._delay(limited, 0) <= 30


def test_hintless_429s_are_retried_until_they_stop() -> None:
    handler = EchoHandler(faults=(429,), max_faults_per_body=3)
    settings = TransportSettings(num_workers=2, max_retries=0, retry_backoff_base=0.01)
    out = asyncio.run(_send_all(IN_PROCESS, ["r", "s"], settings, handler=handler))
    assert out == ["echo: r", "echo: s"]


def test_a_request_gets_a_second_round_of_retries_only_while_others_succeed() -> None:
    # The unlucky body meets five 500s, one more than a round of max_retries=3 allows; other rows pass.
    faulty = EchoHandler(faults=(500,), max_faults_per_body=5, faulty=lambda text: text.startswith("alone="))
    settings = TransportSettings(num_workers=4, max_retries=3, retry_backoff_base=0.05)

    async def go(with_healthy_traffic: bool) -> tuple[Any, int]:
        async with Transport(settings, handler=faulty) as transport:
            request = HttpRequest.json(IN_PROCESS, _body(f"alone={not with_healthy_traffic}"), {})
            unlucky = asyncio.ensure_future(transport.send(request, _content))
            if with_healthy_traffic:  # the same job's other rows go through meanwhile
                await asyncio.sleep(0.01)
                await transport.send(HttpRequest.json(IN_PROCESS, _body("ok"), {}), _content)
            try:
                return await unlucky, transport.stats["requests"]
            except RemoteError as exc:
                return exc, transport.stats["requests"]

    outcome, _ = asyncio.run(go(with_healthy_traffic=False))
    assert isinstance(outcome, RemoteError) and "gave up after 4 failed attempts" in str(outcome)
    outcome, requests = asyncio.run(go(with_healthy_traffic=True))
    assert outcome == "echo: alone=False" and requests == 6 + 1
