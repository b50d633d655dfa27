"""The replica: a Ray actor that builds the engine once and answers the row batches the driver sends.

A replica never writes a file. It returns each batch's results to the driver, the job's single writer,
so a batch lost with its replica is simply sent again and a row is written once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from infermux.configs.inference_config import InferenceConfig
from infermux.engines.remote.base import RemoteEngine
from infermux.errors import ErrorKind, InfermuxError, RowError
from infermux.jobs.loop import run_chunks
from infermux.jobs.rows import InputRow, with_default_tools
from infermux.types import Conversation, Tool

__all__ = ["Replica", "ReplicaStartError"]


class ReplicaStartError(InfermuxError):
    """A replica could not build its engine (bad model path, missing key or extra on a node, ...)."""


class Replica:
    """Plain class; the driver wraps it with ``ray.remote`` (Ray stays out of this module's imports)."""

    def __init__(self, config: InferenceConfig, index: int, tools: list[Tool] | None = None) -> None:
        self.index = index
        self.tools = tools  # the job's --tools, for rows without their own (sent once, not with every row)
        self.generation = config.generation
        self.error: tuple[str, str] | None = None
        self.engine: Any = None
        try:
            from infermux.engines.registry import build_engine

            self.engine = build_engine(config)
        except Exception as exc:  # reported by ready(): a constructor error would only say "actor died"
            self.error = (type(exc).__name__, str(exc))
        self._session: contextlib.AsyncExitStack | None = None  # the engine's session, from the first batch
        self._serial: asyncio.Lock | None = None

    async def ready(self) -> dict[str, Any]:
        """Where the replica runs and how to feed it; the engine's start-up error, if any."""
        import ray

        info: dict[str, Any] = {
            "index": self.index,
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
        }
        if self.error is not None:
            info["error"] = self.error
            return info
        info["chunk_size"] = max(1, self.engine.chunk_size(self.generation))
        info["max_concurrency"] = max(1, self.engine.max_concurrency())
        info["remote"] = isinstance(self.engine, RemoteEngine)  # its rows per call follow its HTTP workers
        return info

    async def infer(self, rows: list[InputRow]) -> list[Conversation | RowError]:
        """Answer ``rows`` in order (failures as ``RowError``), exactly as the one-machine job loop does."""
        if self.engine is None:
            raise ReplicaStartError(self.error[1] if self.error else "engine not built")
        if self._session is None:
            self._session = contextlib.AsyncExitStack()
            await self._session.enter_async_context(self.engine.session())
        if self._serial is None:
            self._serial = asyncio.Lock()
        if self.tools:
            rows = list(with_default_tools(rows, self.tools))
        position = {row.row_id: i for i, row in enumerate(rows)}
        results: list[Conversation | RowError | None] = [None] * len(rows)

        def keep(row: InputRow, result: Conversation | RowError) -> None:
            results[position[row.row_id]] = result

        if self.engine.max_concurrency() > 1:  # a remote engine: its transport bounds the requests
            await run_chunks(self.engine, rows, self.generation, keep)
        else:  # a local engine answers one batch at a time; the next one waits here, already delivered
            async with self._serial:
                await run_chunks(self.engine, rows, self.generation, keep)
        return [r if r is not None else RowError(kind=ErrorKind.INTERNAL, message="no result") for r in results]

    async def close(self) -> None:
        if self.engine is not None:
            if self._session is not None:
                session, self._session = self._session, None
                await session.aclose()
            self.engine.close()
