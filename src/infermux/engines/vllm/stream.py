"""VLLM streaming: one conversation fed to the running engine, its text yielded step by step.

The request joins vLLM's running batch at its next step (:meth:`.feed.Feeder.stream`), beside batch
chunks and other streams; each step's new text goes onto an asyncio queue through
``loop.call_soon_threadsafe``. vLLM's detokenizer holds back text that could still become a stop string,
so the deltas add up to the final answer. A consumer that stops listening aborts its request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from infermux.configs.generation_params import GenerationParams
from infermux.engines.base import InferenceEngine, StreamEvent
from infermux.engines.tool_calls import template_messages, template_tools
from infermux.engines.vllm.feed import rejected_input
from infermux.errors import InputError
from infermux.samples import wants_samples
from infermux.types import Conversation

if TYPE_CHECKING:
    from infermux.engines.vllm.engine import VLLMInferenceEngine

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
    engine: VLLMInferenceEngine, conversation: Conversation, generation: GenerationParams
) -> AsyncIterator[StreamEvent]:
    """Yield ``conversation``'s answer as vLLM generates it, then the final conversation (as ``infer``
    would answer it: same text, finish reason and usage). Several answers, log-probabilities and rows
    that offer tools (their text is parsed into calls at the end) come whole, as one delta."""
    if wants_samples(generation) or conversation.tools:
        async for event in InferenceEngine._stream(engine, conversation, generation):
            yield event
        return
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def push(item: Any) -> None:  # in the feeder thread: never raises
        try:
            piece = item if isinstance(item, BaseException) else _piece(item)
        except Exception as exc:  # an output this code cannot read: the stream fails, the feeder goes on
            piece = exc
        with contextlib.suppress(RuntimeError):  # the event loop may be gone after a cancel
            loop.call_soon_threadsafe(queue.put_nowait, piece)

    params = (engine.sampling_params(generation), template_tools(conversation))
    feeder = engine.feeder()
    handle = feeder.stream(template_messages(conversation), params, engine._enqueue, push)
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
    reply = engine._reply(conversation, whole, generation, None)
    if not isinstance(reply, Conversation):  # no tools, no forced call: _reply answers every output
        raise InputError(reply.message)
    yield StreamEvent(conversation=reply, metadata=dict(reply.metadata))
