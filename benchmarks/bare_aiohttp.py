"""The baseline every remote benchmark is compared against: a bare aiohttp loop.

``workers`` tasks share one pooled session and pull request bodies from one iterator; each posts the
JSON body, parses the JSON reply and keeps the assistant text. No retries, no rate control, no output
file: the least a client must do. A row that fails is counted as lost.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp


async def run(url: str, bodies: list[dict[str, Any]], workers: int) -> tuple[list[str | None], float]:
    """Send every body to ``url`` with ``workers`` concurrent requests; return (texts, seconds)."""
    results: list[str | None] = [None] * len(bodies)
    indices = iter(range(len(bodies)))
    connector = aiohttp.TCPConnector(limit=workers)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for i in indices:
                try:
                    async with session.post(
                        url, data=json.dumps(bodies[i]), headers={"Content-Type": "application/json"}
                    ) as resp:
                        data = json.loads(await resp.read())
                    results[i] = data["choices"][0]["message"]["content"]
                except (aiohttp.ClientError, ValueError, KeyError, TypeError):
                    results[i] = None

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        elapsed = time.perf_counter() - start
    return results, elapsed


def run_sync(url: str, bodies: list[dict[str, Any]], workers: int) -> tuple[list[str | None], float]:
    """:func:`run` in a fresh event loop."""
    return asyncio.run(run(url, bodies, workers))
