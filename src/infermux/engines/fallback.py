"""The job's engine followed by fallback engines (``fallbacks:``), used as one engine.

:class:`FallbackEngine` answers each row with the first engine that can. A row moves on to the next
engine only after a failure that another engine may not share (:func:`can_fall_back`): the server down
or failing (connection errors, timeouts, 5xx), the account's quota or billing limit, or a rate limit that
outlasted ``rate_limit_timeout``. A bad request, a context too long, a refused key or input the engine
cannot take is the row's answer (another engine would refuse it too, or the user must fix something).

An engine whose server is down or rate limited rests (:class:`~infermux.engines.health.Health`,
``remote_params.endpoint_cooldown`` of the failing engine, else 10 s): rows go straight to the next
engine until a probe finds it back. Every answered row records the engine and model that answered in
``metadata["answered_by"]`` (``{"engine": "OPENAI", "model": "gpt-4o-mini"}``); its cost is priced by that model
(:func:`infermux.jobs.cost.price_answer`). A row that no engine answered keeps the last engine's error,
which names the engines tried.

Batch jobs, ``chat`` and ``serve`` all go through the public entry points (``answer``, ``stream``,
``session``), so all of them fall back the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from infermux.configs.generation_params import GenerationParams
from infermux.engines.base import InferenceEngine, StreamEvent
from infermux.engines.health import Health
from infermux.errors import ErrorKind, RemoteError, RowError, ServerUnreachableError
from infermux.types import Conversation

if TYPE_CHECKING:
    from infermux.configs.fallback_params import FallbackConfig

__all__ = ["FallbackEngine", "can_fall_back"]

_DOWN = frozenset({ErrorKind.CONNECTION_ERROR, ErrorKind.TIMEOUT, ErrorKind.RATE_LIMITED})


def can_fall_back(kind: ErrorKind | str, status: int | None) -> bool:
    """Whether a row that failed so may be answered by another engine."""
    kind = ErrorKind.coerce(kind)
    if kind in _DOWN or kind == ErrorKind.QUOTA_EXCEEDED:
        return True
    return kind == ErrorKind.HTTP_ERROR and (status is None or status >= 500)


def _rests(error: RowError) -> bool:
    """Whether the engine itself is out for a while (down or rate limited), not just this row."""
    return error.kind in _DOWN or (error.kind == ErrorKind.HTTP_ERROR and (error.status or 500) >= 500)


@dataclasses.dataclass(eq=False)
class _Member:
    engine: InferenceEngine
    generation: GenerationParams | None  # its own; None: the job's
    health: Health

    @property
    def label(self) -> str:
        return self.engine.label

    @property
    def answered_by(self) -> dict[str, str]:
        return {"engine": self.engine.label, "model": self.engine.model_params.model_name}


class FallbackEngine(InferenceEngine):
    """``primary``, then each of ``fallbacks`` for the rows the ones before could not answer."""

    def __init__(
        self,
        primary: InferenceEngine,
        fallbacks: Sequence[tuple[InferenceEngine, GenerationParams | None]],
        *,
        configs: Sequence[FallbackConfig] = (),
    ) -> None:
        self.primary = primary
        self.capabilities = primary.capabilities  # type: ignore[misc]
        self.engine_type = primary.engine_type  # type: ignore[misc]
        #: The fallbacks as configured: the job fingerprint counts them (:func:`infermux.jobs.api.engine_fingerprint`).
        self.fallback_configs = list(configs)
        self.members = [
            _Member(engine, generation, Health(_cooldown(engine), burst=1))
            for engine, generation in [(primary, None), *fallbacks]
        ]
        super().__init__(
            primary.model_params,
            generation_params=primary.generation_params,
            remote_params=primary.remote_params,
            strict=primary.strict,
        )

    @property
    def name(self) -> str:
        return self.primary.name

    # ------------------------------------------------------------------ the seam, for every runner
    def chunk_size(self, generation: GenerationParams) -> int:
        return self.primary.chunk_size(generation)

    def max_concurrency(self) -> int:
        return self.primary.max_concurrency()

    def check_ready(self) -> None:
        for member in self.members:
            member.engine.check_ready()

    def check_conversation(self, conversation: Conversation) -> RowError | None:
        return self.primary.check_conversation(conversation)

    def _check_declared(self, generation: GenerationParams, *, tools: bool = False) -> None:
        self.primary._check_declared(generation, tools=tools)

    def _check(self, generation: GenerationParams, *, tools: bool = False) -> None:
        self.primary._check(generation, tools=tools)

    def limit_problems(self, generation: GenerationParams) -> list[str]:
        return self.primary.limit_problems(generation)

    async def _open(self) -> None:
        self._stack = contextlib.AsyncExitStack()
        for member in self.members:
            await self._stack.enter_async_context(member.engine.session())

    async def _close(self) -> None:
        await self._stack.aclose()

    def close(self) -> None:
        for member in self.members:
            member.engine.close()

    async def _infer_chunk(
        self, conversations: list[Conversation], generation: GenerationParams
    ) -> list[Conversation | RowError]:
        results: list[Conversation | RowError] = [
            RowError(kind=ErrorKind.CONNECTION_ERROR, message="no engine was usable") for _ in conversations
        ]
        waiting = list(range(len(conversations)))
        tried: list[str] = []
        last = len(self.members) - 1
        for position, member in enumerate(self.members):
            now = time.monotonic()
            if not waiting:
                break
            if position < last and not member.health.usable(now):
                continue  # resting: its rows go on to the next engine at once
            member.health.begin(now)
            try:
                rows = [conversations[i] for i in waiting]
                answers = await self._answer(member, rows, generation, position == last)
            except BaseException:
                member.health.abandoned()
                raise
            tried.append(member.label)
            still: list[int] = []
            for i, answer in zip(waiting, answers, strict=True):
                results[i] = answer
                if isinstance(answer, Conversation):
                    answer.metadata["answered_by"] = member.answered_by
                elif can_fall_back(answer.kind, answer.status) and position < last:
                    still.append(i)
            # Down or rate limited (and nothing answered): rest. Any other answer, even an error, says it is up.
            down = any(isinstance(a, RowError) and _rests(a) for a in answers)
            if down and not any(isinstance(a, Conversation) for a in answers):
                member.health.failed(down=True)
            else:
                member.health.succeeded()
            waiting = still
        if len(tried) > 1:
            for i, result in enumerate(results):
                if isinstance(result, RowError) and can_fall_back(result.kind, result.status):
                    note = f" (tried {', '.join(tried)}; this is {tried[-1]}'s answer)"
                    results[i] = dataclasses.replace(result, message=result.message + note)
        return results

    async def _answer(
        self, member: _Member, rows: list[Conversation], generation: GenerationParams, final: bool
    ) -> list[Conversation | RowError]:
        """``member``'s answers to ``rows``; a server that was never reached fails its rows (the job stops
        only when it is the last engine)."""
        own = member.generation or generation
        try:
            return await member.engine.answer(rows, own)
        except ServerUnreachableError as exc:
            if final:
                raise
            error = RowError(kind=ErrorKind.CONNECTION_ERROR, message=str(exc), retryable=True)
            return [error] * len(rows)

    async def _stream(self, conversation: Conversation, generation: GenerationParams) -> AsyncIterator[StreamEvent]:
        """The first engine that starts answering streams the answer; one that fails before its first
        event, for a reason another may not share, hands over to the next."""
        last = len(self.members) - 1
        for position, member in enumerate(self.members):
            now = time.monotonic()
            if position < last and not member.health.usable(now):
                continue
            member.health.begin(now)
            started = False
            try:
                async for event in member.engine.stream(conversation, member.generation or generation):
                    started = True
                    if event.conversation is not None:
                        event.conversation.metadata["answered_by"] = member.answered_by
                        event.metadata["answered_by"] = member.answered_by
                    yield event
            except (asyncio.CancelledError, GeneratorExit):
                member.health.abandoned()
                raise
            except (RemoteError, ServerUnreachableError) as exc:
                if started or position == last or not can_fall_back(exc.kind, exc.status):
                    member.health.succeeded()
                    raise
                if _rests(RowError(kind=exc.kind, message="", status=exc.status)):
                    member.health.failed(down=True)
                else:
                    member.health.succeeded()  # it answered (out of quota): up, and tried again next time
                continue
            member.health.succeeded()
            return

    def __repr__(self) -> str:
        return f"FallbackEngine({' -> '.join(repr(m.engine) for m in self.members)})"


def _cooldown(engine: InferenceEngine) -> float:
    params = engine.remote_params
    return params.endpoint_cooldown if params is not None else 10.0
