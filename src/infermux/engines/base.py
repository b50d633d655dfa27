"""The engine contract.

Runners (the batch loop, ``serve``, chat, the Ray replica) call four public entry points, which engines
do not override:

- :meth:`InferenceEngine.answer` answers a chunk of conversations, each failure a :class:`RowError`
  (the row check, exceptions turned into errors, the length check: what happens before a row runs);
  :meth:`InferenceEngine.answer_each` does the same, yielding each row as it finishes;
- :meth:`InferenceEngine.stream` streams one answer (the settings and the row checked first);
- :meth:`InferenceEngine.session` holds the engine's connections open while inside (it nests);
- :meth:`InferenceEngine.check` checks generation settings before any row runs.

An engine subclasses :class:`InferenceEngine`, declares its :class:`Capabilities`, and implements
protected hooks: ``setup`` (load the model, read credentials), and::

    async def _infer_chunk(self, conversations, generation) -> list[Conversation | RowError]

which answers a chunk of conversations (in order; each answer is ``conversation.with_reply(text,
metadata)``, each failure a :class:`RowError`). An engine whose rows finish at different times (a local
decoder, where a short answer ends many steps before a long one) implements instead::

    async def _infer_rows(self, conversations, generation) -> AsyncIterator[tuple[int, Conversation | RowError]]

which yields ``(index, result)`` for each row as it finishes, in any order; the batch loop then records
every row the moment it is done (a ``kill -9`` mid-chunk loses only the unfinished rows).
``chunk_size()`` and ``max_concurrency()`` tell the
batch loop how to feed it: a local engine takes large chunks one at a time (and runs its blocking
library call through ``asyncio.to_thread``); a remote engine takes one row per chunk with many chunks
in flight. Everything else (reading input, resume, ordering, progress, errors as data) is the batch
loop's, in :mod:`infermux.jobs.loop`. Engines that stream implement ``_stream`` (the default yields the
whole answer at once); engines with sessions implement ``_open``/``_close``. An engine whose provider
has a batch API returns its client from ``batch_client()`` (:mod:`infermux.engines.batch_client`).

The engine is the model adapter only. Jobs (input files, resume, fingerprints, row ids) live in
:mod:`infermux.jobs`; ``infer``, ``ainfer`` and ``run_file`` here are conveniences over
:mod:`infermux.jobs.api`, and ``submit_batch``, ``batch_status``, ``fetch_batch``, ``cancel_batch`` and
``list_batches`` over :mod:`infermux.jobs.provider_batch`, imported when called (the job layer depends
on engines, not the reverse).

Engines import their heavy library in ``__init__`` (first use), never at module import.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from infermux.configs.engine_type import InferenceEngineType, engine_name
from infermux.configs.generation_params import GenerationParams
from infermux.configs.model_params import ModelParams
from infermux.configs.remote_params import RemoteParams
from infermux.engines.capabilities import Capabilities, check_limits, check_params, refuse_unsupported
from infermux.engines.identity import RegisteredName
from infermux.engines.tool_calls import tool_choice_problem
from infermux.errors import ConfigError, InputError, RowError, ServerUnreachableError
from infermux.text import scrub_reply, scrub_surrogates
from infermux.types import Conversation, TokenLogprob, Usage

if TYPE_CHECKING:
    from infermux.configs.inference_config import InferenceConfig
    from infermux.engines.batch_client import BatchClient
    from infermux.jobs.batch_state import BatchJobState
    from infermux.jobs.loop import BatchReport
    from infermux.jobs.provider_batch import BatchFetchReport
    from infermux.jobs.rows import InputRow
    from infermux.types import Tool

__all__ = ["InferenceEngine", "StreamEvent"]

T = TypeVar("T")


@dataclass
class StreamEvent:
    """A piece of a streamed answer: text ``delta``s, then one event with the final ``conversation``."""

    delta: str = ""
    conversation: Conversation | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    #: With ``generation.logprobs``, on engines that stream them: the tokens sampled since the last event
    #: (a token that is part of a character may come with an empty ``delta``); None otherwise.
    logprobs: list[TokenLogprob] | None = None

    def __post_init__(self) -> None:
        # Lone UTF-16 surrogates (a reply cut inside an emoji) cannot be printed or saved: U+FFFD instead.
        if self.delta:
            self.delta = scrub_surrogates(self.delta)
        if self.conversation is not None:
            self.conversation = scrub_reply(self.conversation)

    @property
    def final(self) -> bool:
        return self.conversation is not None

    @property
    def usage(self) -> Usage | None:
        """The answer's token counts, from the final event's ``metadata["usage"]`` (None on deltas)."""
        return Usage.from_json_dict(self.metadata.get("usage"))


#: Distinct generation settings an engine keeps derived objects for (a long-running ``serve`` sees a new
#: one per client seed or ``max_tokens``): past this, the oldest is dropped.
SETTINGS_CACHE_SIZE = 256


def remember(cache: dict[Any, Any], key: Any, value: Any, limit: int = SETTINGS_CACHE_SIZE) -> Any:
    """Store ``value`` under ``key``, dropping the oldest entry past ``limit``; return ``value``."""
    if key not in cache and len(cache) >= limit:
        del cache[next(iter(cache))]
    cache[key] = value
    return value


class InferenceEngine:
    """Base class of every engine. See the module docstring for the seam to implement."""

    #: The engine's name, from its identity row in the registry (:mod:`infermux.engines.identity`).
    engine_type: ClassVar[InferenceEngineType | str | None] = RegisteredName()  # type: ignore[assignment]
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: Environment variables the engine reads, name -> what for (docs/engines.md lists them).
    env_vars: ClassVar[Mapping[str, str]] = {}
    #: Whether this engine compiles guided decoding itself (a grammar, in this process): its constraints
    #: are then held to :mod:`infermux.engines.guided_bounds`.
    compiles_guided: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        legacy = cls.__dict__.get("astream")
        if legacy is not None and legacy is not InferenceEngine.stream and "_stream" not in cls.__dict__:
            # An engine written against the earlier seam overrode ``astream``: that is its stream hook now,
            # and runners still check the row and open a session around it through :meth:`stream`.
            cls._stream = legacy  # type: ignore[method-assign]
            cls.astream = InferenceEngine.stream  # type: ignore[method-assign]

    def __init__(
        self,
        model_params: ModelParams,
        *,
        generation_params: GenerationParams | None = None,
        remote_params: RemoteParams | None = None,
        strict: bool = False,
    ) -> None:
        self.model_params = model_params
        self.generation_params = generation_params or GenerationParams()
        self.remote_params = remote_params
        self.strict = strict
        self.last_report: BatchReport | None = None
        self._checked: dict[str, None] = {}  # insertion-ordered, bounded: see remember()
        self._warned: set[str] = set()
        self._sessions = 0
        # Settings the engine declares it cannot honour fail before a model loads or a key is read; the
        # whole check (an engine's own _check may use what setup() loaded) runs once setup() is done.
        self._check_declared(self.generation_params)
        self.setup()
        self.check(self.generation_params)

    def setup(self) -> None:
        """Engine-specific start-up once the configs are stored (load the model, read credentials, ...).

        Engines override this (calling ``super().setup()``) instead of repeating the constructor.
        """

    # ------------------------------------------------------------------ entry points (runners call these)
    async def answer(
        self, conversations: list[Conversation], generation: GenerationParams
    ) -> list[Conversation | RowError]:
        """Answer ``conversations`` in order, each failure as a :class:`RowError` (never raises for a row).

        Rows :meth:`check_conversation` refuses fail without reaching the engine; a chunk-wide exception
        becomes the error of each row that ran. Call it inside :meth:`session`. Not overridden: engines
        implement :meth:`_infer_chunk` (or :meth:`_infer_rows`: rows answered before a failure are kept).
        """
        if self.yields_rows():
            collected: list[Conversation | RowError | None] = [None] * len(conversations)
            async for i, result in self.answer_each(conversations, generation):
                collected[i] = result
            return [r if r is not None else RowError(kind="internal", message="no result") for r in collected]
        if not conversations:
            return []
        if len(conversations) == 1:  # (one row a call on remote engines: this runs for every row)
            problems = [self._row_problem(conversations[0], generation)]
        else:
            problems = [self._row_problem(conversation, generation) for conversation in conversations]
        runnable: list[int] | None = None  # None: every row runs (the common chunk), no lists to line up
        todo = conversations
        if problems[0] is not None or (len(problems) > 1 and any(problems)):
            runnable = [i for i, problem in enumerate(problems) if problem is None]
            todo = [conversations[i] for i in runnable]
        out: list[Conversation | RowError] = []
        if todo:
            try:
                out = await self._infer_chunk(todo, generation)
                if len(out) != len(todo):
                    raise RuntimeError(f"engine returned {len(out)} results for {len(todo)} rows")
            except (asyncio.CancelledError, ServerUnreachableError):  # the job's end, not a row's failure
                raise
            except Exception as exc:  # a chunk-wide failure becomes a failure of each of its rows
                out = [RowError.from_exception(exc)] * len(todo)
        results: list[Conversation | RowError | None]
        if runnable is None:
            results = out  # type: ignore[assignment]
            for result in out:
                if result is None:  # an engine that left a row out
                    break
            else:
                return out
        else:
            results = list(problems)
            for i, result in zip(runnable, out, strict=True):
                results[i] = result
        return [r if r is not None else RowError(kind="internal", message="no result") for r in results]

    async def answer_each(
        self, conversations: list[Conversation], generation: GenerationParams
    ) -> AsyncIterator[tuple[int, Conversation | RowError]]:
        """:meth:`answer`, yielding ``(index, result)`` for each row as soon as it is finished (in finishing
        order; every index exactly once). Rows of an engine that implements only :meth:`_infer_chunk` all
        come at the end of the chunk. Not overridden: engines implement :meth:`_infer_rows`."""
        if not self.yields_rows():
            for pair in enumerate(await self.answer(conversations, generation)):
                yield pair
            return
        runnable: list[int] = []
        for i, conversation in enumerate(conversations):
            problem = self.check_conversation(conversation)
            if problem is not None:
                yield i, problem
            else:
                runnable.append(i)
        if not runnable:
            return
        pending = dict.fromkeys(runnable)
        failure: RowError | None = None
        rows = self._infer_rows([conversations[i] for i in runnable], generation)
        try:
            async with contextlib.aclosing(rows):  # type: ignore[type-var]
                async for j, result in rows:
                    index = runnable[j] if 0 <= j < len(runnable) else -1
                    if index not in pending:
                        raise RuntimeError(f"engine gave a result for row {j} twice or out of range")
                    del pending[index]
                    yield index, result
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a chunk-wide failure becomes a failure of each row not yet answered
            failure = RowError.from_exception(exc)
        for index in pending:
            yield index, failure or RowError(kind="internal", message="no result")

    @classmethod
    def yields_rows(cls) -> bool:
        """Whether this engine hands rows back one by one as they finish (it implements :meth:`_infer_rows`)."""
        return cls._infer_rows is not InferenceEngine._infer_rows

    async def stream(
        self, conversation: Conversation, generation: GenerationParams | None = None
    ) -> AsyncIterator[StreamEvent]:
        """Stream one answer: text deltas, then one final event with the conversation.

        The settings and the row are checked first (:meth:`check`: an :class:`~infermux.errors.InputError`
        for a row the engine cannot run), and the answer runs inside a :meth:`session`. Not overridden:
        engines that stream implement :meth:`_stream`.
        """
        generation = generation or self.generation_params
        # A check may compile a grammar, and the row's check reads all of it: off the event loop.
        await asyncio.to_thread(self.check, generation, conversation=conversation)
        async with self.session():
            stream = self._stream(conversation, generation)
            finished = False
            async with contextlib.aclosing(stream):  # type: ignore[type-var]
                async for event in stream:
                    finished = finished or event.final
                    yield event
            if not finished:  # a stream that stops without its answer is never a (short) success
                raise RuntimeError(f"{self.name}'s stream ended without its final answer")

    #: Oumi's name for :meth:`stream`.
    astream = stream

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        """Hold the engine's sessions open (a remote engine's connection pool) while inside.

        Sessions nest and may overlap (a server, its requests, several runners on one engine): the first
        to enter opens (:meth:`_open`), the last to leave closes (:meth:`_close`).
        """
        if self._sessions == 0:
            await self._open()
        self._sessions += 1
        try:
            yield
        finally:
            self._sessions -= 1
            if self._sessions == 0:
                await self._close()

    def check(
        self,
        generation: GenerationParams | None = None,
        *,
        tools: bool = False,
        conversation: Conversation | None = None,
        baseline: GenerationParams | None = None,
    ) -> None:
        """Say (a warning, or an error in strict mode) what of ``generation`` this engine cannot honour, and
        whether it cannot take the tools an input offers (``tools``); callers run it before any row.

        With ``conversation`` (one request, as ``serve`` and chat have), a row this engine cannot run
        raises :class:`~infermux.errors.InputError`. With ``baseline`` (a server's own settings), whatever
        ``generation`` changes of it that this engine cannot honour, and ``tools`` it cannot take, raise
        :class:`~infermux.errors.UnsupportedParamError` in any mode (its ``params`` name them).
        """
        generation = generation or self.generation_params
        if baseline is not None:
            refuse_unsupported(self.label, self.capabilities, generation, baseline, tools=tools)
        self._check(generation, tools=tools)
        if conversation is not None:
            problem = self._row_problem(conversation, generation)
            if problem is not None:
                raise InputError(problem.message)

    def _row_problem(self, conversation: Conversation, generation: GenerationParams) -> RowError | None:
        """:meth:`check_conversation`, then whether ``generation.tool_choice`` fits the tools the row offers (a
        job's ``tool_choice`` is for the rows with tools: the others answer freely)."""
        problem = self.check_conversation(conversation)
        if problem is None and conversation.tools and generation.forced_tool is not None:
            message = tool_choice_problem(conversation.tools, generation)
            if message is not None:
                problem = RowError(kind="invalid_input", message=message)
        return problem

    @classmethod
    def streams_itself(cls) -> bool:
        """Whether this engine implements :meth:`_stream` (rather than answering a stream at once)."""
        return cls._stream is not InferenceEngine._stream

    # ------------------------------------------------------------------ hooks (engines implement these)
    async def _infer_chunk(
        self, conversations: list[Conversation], generation: GenerationParams
    ) -> list[Conversation | RowError]:
        """Answer ``conversations`` in order. Engines implement this or :meth:`_infer_rows`."""
        if not self.yields_rows():
            raise NotImplementedError(f"{self.name} implements neither _infer_chunk nor _infer_rows")
        results: list[Conversation | RowError | None] = [None] * len(conversations)
        rows = self._infer_rows(conversations, generation)
        async with contextlib.aclosing(rows):  # type: ignore[type-var]
            async for i, result in rows:
                results[i] = result
        return [r if r is not None else RowError(kind="internal", message="no result") for r in results]

    async def _infer_rows(
        self, conversations: list[Conversation], generation: GenerationParams
    ) -> AsyncIterator[tuple[int, Conversation | RowError]]:
        """Yield ``(index, result)`` for each of ``conversations`` as it finishes (any order, each index
        once). Engines whose rows finish at different times implement this instead of :meth:`_infer_chunk`."""
        for pair in enumerate(await self._infer_chunk(conversations, generation)):
            yield pair

    async def _stream(self, conversation: Conversation, generation: GenerationParams) -> AsyncIterator[StreamEvent]:
        """Stream one checked answer inside a session. The default runs the whole answer and yields it once;
        engines that stream override it."""
        (result,) = await self._infer_chunk([conversation], generation)
        if isinstance(result, RowError):
            from infermux.errors import RemoteError

            raise RemoteError(result.message, status=result.status, retryable=result.retryable, kind=result.kind)
        yield StreamEvent(delta=result.last_message.text)
        yield StreamEvent(conversation=result, metadata=dict(result.metadata))

    async def _open(self) -> None:
        """Open sessions (connections, pools) when the first :meth:`session` starts, in its event loop."""

    async def _close(self) -> None:
        """Close them when the last :meth:`session` ends."""

    def chunk_size(self, generation: GenerationParams) -> int:
        """Rows handed to one :meth:`answer` call."""
        return generation.batch_size

    def max_concurrency(self) -> int:
        """:meth:`answer` calls in flight at once."""
        return 1

    def check_ready(self) -> None:
        """Raise :class:`~infermux.errors.ConfigError` when the engine cannot run a job as built (for
        example a remote engine without a URL). ``build_engine`` calls it; jobs call it before starting."""

    def check_conversation(self, conversation: Conversation) -> RowError | None:
        """A row-level reason this engine cannot run ``conversation``, or None."""
        if not conversation.messages:
            return RowError(kind="invalid_input", message="the conversation has no messages; add at least one.")
        if not self.capabilities.images and conversation.has_images:  # the cheap test first: runs per row
            return RowError(
                kind="unsupported_input",
                message=f"{self.name} does not accept images; remove them or use an engine that does.",
            )
        return None

    # ------------------------------------------------------------------ public API
    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def label(self) -> str:
        """The engine's registry name (``LLAMACPP``), what configs and ``infermux engines`` call it; the class
        name for an engine registered under none."""
        return engine_name(self.engine_type or self.name)

    @classmethod
    def prompt_counter(
        cls, model_params: ModelParams, generation: GenerationParams
    ) -> Callable[[Conversation], int] | None:
        """A function that counts a row's prompt tokens exactly (chat template applied) without loading the
        model, for ``--dry-run``; None (the default): the plan estimates them (characters / 4)."""
        return None

    @classmethod
    def get_supported_params(cls) -> set[str]:
        """Names of the GenerationParams fields this engine honours."""
        return cls.capabilities.supported_params()

    def constructor_extras(self) -> dict[str, Any]:
        """Keyword arguments this engine was built with beyond the configs (e.g. GOOGLE_VERTEX's
        ``project_id``), kept when a config passed to ``infer`` rebuilds it for one call."""
        return {}

    @classmethod
    def config_limit_problems(cls, model: ModelParams, generation: GenerationParams) -> list[str]:
        """Values the provider would reject for ``model`` (declared in ``capabilities``, and what an engine
        knows of its models), from the configs alone: ``infermux config check`` and every job ask it
        before anything is sent. Engines may narrow or extend it."""
        label = engine_name(cls.engine_type or cls.__name__)
        return check_limits(label, cls.capabilities, generation)

    def limit_problems(self, generation: GenerationParams) -> list[str]:
        """:meth:`config_limit_problems` for this engine's model."""
        return self.config_limit_problems(self.model_params, generation)

    def check_params(self, generation: GenerationParams | None = None, *, tools: bool = False) -> None:
        """Older name of :meth:`check`."""
        self.check(generation, tools=tools)

    def _check(self, generation: GenerationParams, *, tools: bool = False) -> None:
        """The hook behind :meth:`check`: engines that can refuse more (a grammar that does not compile)
        extend it, calling ``super()._check``; it runs after :meth:`setup`."""
        self._check_declared(generation, tools=tools)
        if self.compiles_guided and generation.guided_decoding is not None:
            from infermux.engines.guided_bounds import check_guided

            check_guided(generation.guided_decoding, self.name)

    def _check_declared(self, generation: GenerationParams, *, tools: bool = False) -> None:
        """Say once (warning, or error when strict) what of ``generation`` (and of an input that offers
        ``tools``) this engine's declared capabilities and limits cannot honour; values the provider
        would reject are an error. It needs only the configs, so ``__init__`` runs it before ``setup()``."""
        key = generation.model_dump_json() + ("+tools" if tools else "")
        if key not in self._checked:
            check_params(
                self.name,
                self.capabilities,
                generation,
                self.model_params,
                strict=self.strict,
                tools=tools,
                warned=self._warned,
            )
            problems = self.limit_problems(generation)
            if problems:
                raise ConfigError(
                    "; ".join(problems) + ". Every request would be rejected: change these settings "
                    "(`infermux config check` lists each limit)."
                )
            remember(self._checked, key, None)

    # ------------------------------------------------------------------ conveniences over infermux.jobs
    def infer(
        self,
        input: Sequence[Conversation] | None = None,
        inference_config: InferenceConfig | None = None,
    ) -> list[Conversation]:
        """Answer ``input`` (or ``inference_config.input_path``); write ``output_path`` if set.

        A config given here overrides the engine's model and remote settings for this call (as in
        Oumi). Rows that fail come back unanswered with ``metadata["error"]`` describing why; the job's
        :class:`~infermux.jobs.loop.BatchReport` is in ``self.last_report``. See
        :func:`infermux.jobs.api.infer`.
        """
        from infermux.jobs.sync import run_sync

        return run_sync(lambda: self.ainfer(input, inference_config))  # type: ignore[no-any-return]

    async def ainfer(
        self,
        input: Sequence[Conversation] | None = None,
        inference_config: InferenceConfig | None = None,
    ) -> list[Conversation]:
        """Async :meth:`infer`."""
        from infermux.jobs import api

        return await api.ainfer(self, input, inference_config)

    async def run_file(
        self,
        input_path: str,
        output_path: str | None,
        *,
        generation: GenerationParams | None = None,
        fingerprint: str | None = None,
        on_progress: Callable[[BatchReport], None] | None = None,
        on_row: Callable[[InputRow, Conversation | RowError], None] | None = None,
        row_ids: list[str] | None = None,
        tools: list[Tool] | None = None,
    ) -> BatchReport:
        """The durable batch job ``input_path`` → ``output_path``: see :func:`infermux.jobs.api.run_job_file`."""
        from infermux.jobs import api

        return await api.run_job_file(
            self,
            input_path,
            output_path,
            generation=generation,
            fingerprint=fingerprint,
            on_progress=on_progress,
            on_row=on_row,
            row_ids=row_ids,
            tools=tools,
        )

    # ------------------------------------------------------------------ the provider's batch API, if any
    def batch_client(self) -> BatchClient | None:
        """The client of the provider's batch API (:mod:`infermux.engines.batch_client`); None without one."""
        return None

    def submit_batch(self, input_path: str, output_path: str, *, fingerprint: str | None = None) -> BatchJobState:
        """Create the provider batches of ``input_path``: see :func:`infermux.jobs.provider_batch.submit`."""
        from infermux.jobs import provider_batch

        return provider_batch.submit(self, input_path, output_path, fingerprint=fingerprint)

    def batch_status(self, output_path: str) -> BatchJobState:
        """Poll every batch of the job recorded beside ``output_path``."""
        from infermux.jobs import provider_batch

        return provider_batch.status(self, output_path)

    def fetch_batch(self, input_path: str, output_path: str, *, fingerprint: str | None = None) -> BatchFetchReport:
        """Download finished results into ``output_path`` (failed rows into its errors file)."""
        from infermux.jobs import provider_batch

        return provider_batch.fetch(self, input_path, output_path, fingerprint=fingerprint)

    def cancel_batch(self, output_path: str) -> BatchJobState:
        """Ask every unfinished batch of the job to stop (where the provider can)."""
        from infermux.jobs import provider_batch

        return provider_batch.cancel(self, output_path)

    def list_batches(self, limit: int = 20) -> list[dict[str, Any]]:
        """The account's most recent batches (where the provider can list them)."""
        from infermux.jobs import provider_batch

        return provider_batch.list_batches(self, limit)

    def close(self) -> None:
        """Release the model or connections (engines override as needed)."""

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fingerprint(self, generation: GenerationParams) -> str:
        from infermux.jobs.api import engine_fingerprint

        return engine_fingerprint(self, generation)

    def __repr__(self) -> str:
        return f"{self.name}(model={self.model_params.model_name!r})"
