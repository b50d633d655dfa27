"""The engine contract.

An engine subclasses :class:`InferenceEngine`, declares its :class:`Capabilities`, and implements one
seam::

    async def _infer_chunk(self, conversations, generation) -> list[Conversation | RowError]

which answers a chunk of conversations (in order; each answer is ``conversation.with_reply(text,
metadata)``, each failure a :class:`RowError`). ``chunk_size()`` and ``max_concurrency()`` tell the
batch loop how to feed it: a local engine takes large chunks one at a time (and runs its blocking
library call through ``asyncio.to_thread``); a remote engine takes one row per chunk with many chunks
in flight. Everything else (reading input, resume, ordering, progress, errors as data) is the batch
loop's, in :mod:`infermux.jobs.loop`.

Streaming (chat) uses :meth:`InferenceEngine.astream`, which engines that can stream override; the
default yields the whole answer at once.

Engines import their heavy library in ``__init__`` (first use), never at module import.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from infermux.configs.engine_type import InferenceEngineType
from infermux.configs.generation_params import GenerationParams
from infermux.configs.inference_config import InferenceConfig
from infermux.configs.model_params import ModelParams
from infermux.configs.remote_params import RemoteParams
from infermux.engines.capabilities import Capabilities, check_params
from infermux.errors import InputError, RowError
from infermux.jobs.loop import BatchReport, JobFiles, run_job
from infermux.jobs.rows import InputRow, iter_rows, row_id_for, unique_id, validate_file
from infermux.types import Conversation

__all__ = ["InferenceEngine", "StreamEvent"]

T = TypeVar("T")


@dataclass
class StreamEvent:
    """A piece of a streamed answer: text ``delta``s, then one event with the final ``conversation``."""

    delta: str = ""
    conversation: Conversation | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.conversation is not None


def run_sync(make: Callable[[], Any]) -> Any:
    """Run the coroutine made by ``make`` to completion, also from inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(make())
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="infermux-infer")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class InferenceEngine:
    """Base class of every engine. See the module docstring for the seam to implement."""

    engine_type: ClassVar[InferenceEngineType | str | None] = None
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: The pip extra that installs this engine's dependencies (for error messages).
    extra: ClassVar[str | None] = None

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
        self._checked: set[str] = set()
        self._check(self.generation_params)

    # ------------------------------------------------------------------ the seam
    async def _infer_chunk(
        self, conversations: list[Conversation], generation: GenerationParams
    ) -> list[Conversation | RowError]:
        """Answer ``conversations`` in order. Subclasses implement this."""
        raise NotImplementedError

    def chunk_size(self, generation: GenerationParams) -> int:
        """Rows handed to one ``_infer_chunk`` call."""
        return generation.batch_size

    def max_concurrency(self) -> int:
        """``_infer_chunk`` calls in flight at once."""
        return 1

    async def _start_job(self) -> None:
        """Called in the job's event loop before the first chunk (open sessions here)."""

    async def _end_job(self) -> None:
        """Called in the job's event loop after the last chunk (close sessions here)."""

    def check_conversation(self, conversation: Conversation) -> RowError | None:
        """A row-level reason this engine cannot run ``conversation``, or None."""
        if conversation.has_images and not self.capabilities.images:
            return RowError(
                kind="unsupported_input",
                message=f"{self.name} does not accept images; remove them or use an engine that does.",
            )
        return None

    # ------------------------------------------------------------------ public API
    @property
    def name(self) -> str:
        return type(self).__name__

    @classmethod
    def get_supported_params(cls) -> set[str]:
        """Names of the GenerationParams fields this engine honours."""
        return cls.capabilities.supported_params()

    def _check(self, generation: GenerationParams) -> None:
        key = generation.model_dump_json()
        if key not in self._checked:
            self._checked.add(key)
            check_params(self.name, self.capabilities, generation, self.model_params, strict=self.strict)

    def infer(
        self,
        input: Sequence[Conversation] | None = None,
        inference_config: InferenceConfig | None = None,
    ) -> list[Conversation]:
        """Answer ``input`` (or ``inference_config.input_path``); write ``output_path`` if set.

        Rows that fail come back unanswered with ``metadata["error"]`` describing why; the job's
        :class:`BatchReport` is in ``self.last_report``.
        """
        return run_sync(lambda: self.ainfer(input, inference_config))  # type: ignore[no-any-return]

    async def ainfer(
        self,
        input: Sequence[Conversation] | None = None,
        inference_config: InferenceConfig | None = None,
    ) -> list[Conversation]:
        """Async :meth:`infer`."""
        generation = inference_config.generation if inference_config else self.generation_params
        self._check(generation)
        output_path = inference_config.output_path if inference_config else None
        if input is None:
            if inference_config is None or not inference_config.input_path:
                raise InputError("no input: pass conversations or set input_path in the config.")
            answered: dict[int, Conversation] = {}

            def keep(row: InputRow, result: Conversation | RowError) -> None:
                answered[row.index] = _as_conversation(row.conversation, result)

            await self.run_file(inference_config.input_path, output_path, generation=generation, on_row=keep)
            if output_path is not None:
                return [Conversation.model_validate_json(line) for line in _read_lines(output_path)]
            return [answered[i] for i in sorted(answered)]
        rows = _rows_from_memory(input, durable=output_path is not None)
        ids = [r.row_id for r in rows]
        collect: list[Conversation | RowError | None] = [None] * len(rows)
        files = JobFiles(output_path, self._fingerprint(generation)) if output_path else None
        report = await run_job(
            self, lambda: rows, ids, generation, files=files, on_row=lambda row, r: collect.__setitem__(row.index, r)
        )
        self.last_report = report
        return [_as_conversation(rows[i].conversation, r) for i, r in enumerate(collect)]

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
    ) -> BatchReport:
        """The durable batch job: ``input_path`` (JSONL) → ``output_path`` (JSONL), resumable.

        ``row_ids`` is what :func:`infermux.jobs.rows.validate_file` returned, when the caller has already
        checked the file (the check is otherwise done here, before any row runs).
        """
        generation = generation or self.generation_params
        self._check(generation)
        ids = row_ids if row_ids is not None else validate_file(input_path)
        files = JobFiles(output_path, fingerprint or self._fingerprint(generation)) if output_path else None
        report = await run_job(
            self,
            lambda: iter_rows(input_path),
            ids,
            generation,
            files=files,
            on_row=on_row,
            on_progress=on_progress,
        )
        self.last_report = report
        return report

    async def astream(
        self, conversation: Conversation, generation: GenerationParams | None = None
    ) -> AsyncIterator[StreamEvent]:
        """Stream one answer. The default runs the whole answer and yields it once."""
        generation = generation or self.generation_params
        problem = self.check_conversation(conversation)
        if problem is not None:
            raise InputError(problem.message)
        await self._start_job()
        try:
            (result,) = await self._infer_chunk([conversation], generation)
        finally:
            await self._end_job()
        if isinstance(result, RowError):
            from infermux.errors import RemoteError

            raise RemoteError(result.message, status=result.status, retryable=result.retryable, kind=result.kind)
        yield StreamEvent(delta=result.last_message.text)
        yield StreamEvent(conversation=result, metadata=dict(result.metadata))

    def close(self) -> None:
        """Release the model or connections (engines override as needed)."""

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fingerprint(self, generation: GenerationParams) -> str:
        config = InferenceConfig(
            model=self.model_params,
            generation=generation,
            engine=self.engine_type,
            remote_params=self.remote_params,
        )
        return config.fingerprint()

    def __repr__(self) -> str:
        return f"{self.name}(model={self.model_params.model_name!r})"


def _rows_from_memory(conversations: Iterable[Conversation], *, durable: bool = True) -> list[InputRow]:
    """Rows with ids; content-derived ids (for resume) only when the job writes an output file."""
    rows = []
    seen: dict[str, int] = {}
    for index, conv in enumerate(conversations):
        if durable:
            raw = json.dumps(conv.to_json_dict(), sort_keys=True).encode()
            rid = row_id_for(index, conv.conversation_id, raw)
        else:
            rid = conv.conversation_id or f"row-{index}"
        rid = unique_id(rid, seen)
        rows.append(InputRow(index=index, line=index + 1, row_id=rid, conversation=conv))
    return rows


def _as_conversation(original: Conversation, result: Conversation | RowError | None) -> Conversation:
    if isinstance(result, Conversation):
        return result
    error = result or RowError(kind="internal", message="row was not run")
    meta = dict(original.metadata)
    meta["error"] = error.to_json_dict()
    return original.model_copy(update={"metadata": meta})


def _read_lines(path: str) -> Iterable[str]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield line
