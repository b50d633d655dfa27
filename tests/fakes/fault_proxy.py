"""A fault-injection HTTP proxy to put in front of any server on 127.0.0.1.

Every request is forwarded to ``--upstream`` unchanged, except that a share ``--fault-rate`` of them
meet one of these faults instead (``--faults`` picks the kinds):

========  =====================================================================================
429       answered ``429`` with ``Retry-After: <--retry-after>`` (and an ``x-ratelimit-reset-requests``
          hint with ``--ratelimit-reset``); the upstream never sees the request
500/503   answered with that status and a JSON error body; the upstream never sees the request
drop      the connection is closed without a reply; the upstream never sees the request
timeout   no reply for ``--hang-s`` seconds, then the connection is closed
truncate  forwarded; the upstream's reply is cut in half (status 200, invalid JSON)
slow      forwarded; the reply body trickles out in chunks over ``--slow-s`` seconds (still valid)
========  =====================================================================================

Faults are deterministic for a seed: whether the n-th sighting of a given request body is faulted
(and how) depends only on ``(seed, body, n)``, never on arrival order, so concurrent clients meet
the same faults on every run. ``--max-faults-per-body`` caps how often one body is faulted.

``GET /_proxy/stats`` returns counts (requests, forwarded, faults by kind). Run it as a process (it
prints ``READY <base url>`` once listening), or use :func:`spawn` from tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import hashlib
import json
import logging
import random
import subprocess
import sys
import time
from collections.abc import Iterator

import aiohttp
from aiohttp import web

FAULT_KINDS = ("429", "500", "503", "drop", "timeout", "truncate", "slow")
_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


class ProxyConfig:
    """What the proxy does; see the module docstring."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.upstream = args.upstream.rstrip("/")
        self.fault_rate = args.fault_rate
        self.faults = tuple(args.faults.split(","))
        self.seed = args.seed
        self.retry_after = args.retry_after
        self.ratelimit_reset = args.ratelimit_reset
        self.hang_s = args.hang_s
        self.slow_s = args.slow_s
        self.max_faults_per_body = args.max_faults_per_body
        self.seen: dict[str, int] = {}
        self.stats: dict[str, object] = {"requests": 0, "forwarded": 0, "faults": {}}

    def pick_fault(self, body: bytes) -> str | None:
        if self.fault_rate <= 0.0:
            return None
        key = hashlib.blake2b(body, digest_size=8).hexdigest()
        nth = self.seen.get(key, 0)
        self.seen[key] = nth + 1
        if nth >= self.max_faults_per_body:
            return None
        rng = random.Random(f"{self.seed}:{key}:{nth}")
        if rng.random() >= self.fault_rate:
            return None
        return rng.choice(self.faults)

    def retry_after_header(self) -> str:
        """``--retry-after`` as sent: seconds, or ``date:N`` for an HTTP date N seconds ahead."""
        if self.retry_after.startswith("date:"):
            when = time.time() + float(self.retry_after[5:])
            return email.utils.formatdate(when, usegmt=True)
        return self.retry_after


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = json.dumps({"error": {"message": message, "type": "injected_fault", "code": status}})
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


def make_app(cfg: ProxyConfig) -> web.Application:
    """The proxy application: stats route, then everything else forwarded (or faulted)."""
    session_holder: dict[str, aiohttp.ClientSession] = {}

    async def on_startup(app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=0)
        session_holder["s"] = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def on_cleanup(app: web.Application) -> None:
        await session_holder["s"].close()

    def count_fault(kind: str) -> None:
        faults = cfg.stats["faults"]
        assert isinstance(faults, dict)
        faults[kind] = faults.get(kind, 0) + 1

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(cfg.stats)

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        cfg.stats["requests"] = int(cfg.stats["requests"]) + 1  # type: ignore[call-overload]
        fault = cfg.pick_fault(body)
        if fault is not None:
            count_fault(fault)
        if fault == "429":
            headers = {"Retry-After": cfg.retry_after_header()} if cfg.retry_after != "none" else {}
            if cfg.ratelimit_reset:
                headers["x-ratelimit-reset-requests"] = cfg.ratelimit_reset
            return _error(429, "Rate limit reached (injected)", headers)
        if fault in ("500", "503"):
            return _error(int(fault), f"Injected {fault}")
        if fault in ("drop", "timeout"):
            if fault == "timeout":
                await asyncio.sleep(cfg.hang_s)
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=500)  # never reaches the client: the socket is closed

        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        url = cfg.upstream + request.path_qs
        async with session_holder["s"].request(request.method, url, data=body, headers=headers) as upstream:
            payload = await upstream.read()
            status = upstream.status
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
        cfg.stats["forwarded"] = int(cfg.stats["forwarded"]) + 1  # type: ignore[call-overload]
        if fault == "truncate":
            payload = payload[: len(payload) // 2]
        if fault != "slow":
            return web.Response(status=status, body=payload, headers=out_headers)
        response = web.StreamResponse(status=status, headers=out_headers)
        await response.prepare(request)
        pieces = 4
        step = max(1, -(-len(payload) // pieces))
        for start in range(0, len(payload), step):
            await asyncio.sleep(cfg.slow_s / pieces)
            await response.write(payload[start : start + step])
        await response.write_eof()
        return response

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_get("/_proxy/stats", stats)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def _serve(cfg: ProxyConfig, host: str, port: int) -> None:
    runner = web.AppRunner(make_app(cfg), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
    await site.start()
    print(f"READY http://{host}:{runner.addresses[0][1]}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Fault-injection HTTP proxy")
    p.add_argument("--upstream", required=True, help="base URL to forward to")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--fault-rate", type=float, default=0.2)
    p.add_argument("--faults", default=",".join(FAULT_KINDS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retry-after", default="0", help="seconds, date:N for an HTTP date, or none")
    p.add_argument("--ratelimit-reset", default="", help="x-ratelimit-reset-requests value, e.g. 1s")
    p.add_argument("--hang-s", type=float, default=5.0, help="how long a 'timeout' fault hangs")
    p.add_argument("--slow-s", type=float, default=0.2, help="how long a 'slow' body takes")
    p.add_argument("--max-faults-per-body", type=int, default=1_000_000)
    args = p.parse_args(argv)
    unknown = set(args.faults.split(",")) - set(FAULT_KINDS)
    if unknown:
        p.error(f"unknown fault kinds {sorted(unknown)}; choose from {', '.join(FAULT_KINDS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(ProxyConfig(args), args.host, args.port))


@contextlib.contextmanager
def spawn(upstream: str, *args: str, python: str = sys.executable) -> Iterator[str]:
    """Run the proxy in a child process in front of ``upstream``; yield its base URL."""
    cmd = [python, __file__, "--upstream", upstream, *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"fault proxy did not start (said {line!r})")
        yield line.split()[1]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
