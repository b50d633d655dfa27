"""VLLM streaming: one conversation fed to the running engine, its text yielded step by step.

The request joins vLLM's running batch at its next step (:meth:`.feed.Feeder.stream`), beside batch
chunks and other streams; each step's new text goes onto an asyncio queue through
``loop.call_soon_threadsafe``. vLLM's detokenizer holds back text that could still become a stop string,
so the deltas add up to the final answer. A consumer that stops listening aborts its request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from infermux.engines.base import StreamEvent
from infermux.engines.vllm.feed import rejected_input
from infermux.errors import InputError, RowError
from infermux.types import Conversation

if TYPE_CHECKING:
    from infermux.engines.vllm.feed import Feeder

__all__ = ["stream_reply"]


@dataclass
class _Completion:
    """The pieces of one streamed completion, summed (what ``_reply`` reads of a vLLM ``CompletionOutput``)."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: Any = None


@dataclass
class _Output:
    """A streamed request's whole output (what ``_reply`` reads of a vLLM ``RequestOutput``)."""

    prompt: str | None = None
    prompt_token_ids: list[int] = field(default_factory=list)
    outputs: list[_Completion] = field(default_factory=lambda: [_Completion()])


def _piece(output: Any) -> tuple[str, list[int], _Output | None]:
    """What the consumer needs of one step's ``RequestOutput`` (read in the feeder thread): the new text
    and tokens, and on the last step the prompt and finish reason."""
    completion = output.outputs[0]
    last = None
    if output.finished:
        ended = _Completion(finish_reason=completion.finish_reason or "stop")
        last = _Output(output.prompt, list(output.prompt_token_ids or []), [ended])
    return completion.text, list(completion.token_ids), last


async def stream_reply(
    feeder: Feeder,
    chat: list[Any],
    params: Any,
    enqueue: Callable[[Any, list[Any], Any], list[str]],
    reply: Callable[[Any], Conversation | RowError],
) -> AsyncIterator[StreamEvent]:
    """Feed ``chat`` (with ``params``: sampling params and offered tools) to the running engine through
    ``enqueue``, yield its text as vLLM generates it, then the final conversation that ``reply`` makes of
    the whole output (as ``infer`` would answer it: same text, finish reason and usage)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def push(item: Any) -> None:  # in the feeder thread: never raises
        try:
            piece = item if isinstance(item, BaseException) else _piece(item)
        except Exception as exc:  # an output this code cannot read: the stream fails, the feeder goes on
            piece = exc
        with contextlib.suppress(RuntimeError):  # the event loop may be gone after a cancel
            loop.call_soon_threadsafe(queue.put_nowait, piece)

    handle = feeder.stream(chat, params, enqueue, push)
    whole = _Output()
    done = False
    try:
        while not done:
            item = await queue.get()
            if isinstance(item, BaseException):
                done = True
                if rejected_input(item):  # too long, ...
                    raise InputError(f"vLLM rejected this conversation: {item}") from item
                raise item
            text, token_ids, last = item
            whole.outputs[0].text += text
            whole.outputs[0].token_ids += token_ids
            if last is not None:
                done = True
                whole.prompt, whole.prompt_token_ids = last.prompt, last.prompt_token_ids
                whole.outputs[0].finish_reason = last.outputs[0].finish_reason
            if text:
                yield StreamEvent(delta=text)
    finally:
        if not done:
            feeder.abort(handle)  # the consumer went away: vLLM drops the request at its next step
    answer = reply(whole)
    if not isinstance(answer, Conversation):  # no tools, no forced call: the engine answers every output
        raise InputError(answer.message)
    yield StreamEvent(conversation=answer, metadata=dict(answer.metadata))
