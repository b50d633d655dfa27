"""Streaming NATIVE answers, as text deltas and then ``(final_text, usage, finish_reason)``.

- :func:`scheduled`: models the engine's decode loop can drive; the request joins the
  :class:`~infermux.engines.native.scheduler.StreamScheduler`'s batch (concurrent streams decode
  together) and its tokens are turned into text here, as they arrive; ``n`` answers and
  log-probabilities are ``n`` rows, and end with every answer instead.
- :func:`threaded`: other models; ``model.generate`` with a transformers text streamer in a thread, one
  stream at a time (under the engine's lock).

Stop strings end the answer before they are shown: text that could still turn out to be the start of a
stop string is held back until it cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

from infermux.configs.generation_params import GenerationParams
from infermux.engines.native.logprobs import ScoreRecorder
from infermux.engines.native.model import LoadedModel
from infermux.engines.native.params import build_processors, cut_at_stop, stop_token_ids
from infermux.engines.native.scheduler import Request, StreamScheduler
from infermux.types import FinishReason, TokenLogprob, Usage

__all__ = ["ScoredDelta", "TextDeltas", "scheduled", "stream_tokens", "threaded"]


Answer = tuple[str, Usage, FinishReason]


@dataclass(frozen=True)
class ScoredDelta:
    """A text delta with the log-probabilities of the tokens behind it (a streamed ``logprobs`` answer)."""

    text: str
    logprobs: list[TokenLogprob]


#: A text delta (with its tokens' log-probabilities when asked), the answer, or (``samples``) every answer
#: with its log-probabilities.
Item = str | ScoredDelta | Answer | list[tuple[str, Usage, FinishReason, list[TokenLogprob] | None]]


class TextDeltas:
    """Token ids in, text deltas out: the answer so far is decoded whole at each token (decoding is not
    always additive per token), cut at a stop string, and shown up to what cannot change any more."""

    def __init__(self, tokenizer: Any, generation: GenerationParams) -> None:
        self.tokenizer, self.skip = tokenizer, generation.skip_special_tokens
        self.stops = generation.stop_strings or []
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.tokens: list[int] = []
        self.shown = ""
        self.stopped = False

    def add(self, token: int) -> str:
        self.tokens.append(token)
        if self.stopped:
            return ""
        text, self.stopped = cut_at_stop(self.text(), self.stops)
        safe = len(text) if self.stopped else len(text) - self.hold
        safe = min(safe, len(text[:safe].rstrip("\ufffd")))  # an unfinished multi-byte character waits
        if safe <= len(self.shown) or not text.startswith(self.shown):
            return ""
        delta, self.shown = text[len(self.shown) : safe], text[:safe]
        return delta

    def text(self) -> str:
        return str(self.tokenizer.decode(self.tokens, skip_special_tokens=self.skip))

    def rest(self, answer: str) -> str:
        """What is left to show of the final ``answer``."""
        return answer[len(self.shown) :] if answer.startswith(self.shown) else ""


async def scheduled(
    engine: LoadedModel,
    scheduler: StreamScheduler,
    prompt: list[int],
    generation: GenerationParams,
    should_stop: Callable[[list[int]], bool] | None,
    *,
    samples: bool = False,
) -> AsyncGenerator[Item, None]:
    """Stream one answer from the scheduler's shared batch; closing this generator frees its rows.

    With ``samples`` (``n`` answers and/or log-probabilities), the ``n`` answers are ``n`` rows of the
    batch, admitted together; a seeded request's rows share one generator and draw together, as the
    engine's batch decode draws its ``n`` copies, so they get the same answers. The deltas are the first
    answer's, and the last item is every answer as ``(text, usage, finish_reason, logprobs)``. With one
    answer and log-probabilities, each delta is a :class:`ScoredDelta` carrying its tokens' scores, and
    tokens that made no text (the part of a character a cut answer ends with) come in a last one.
    """
    torch = engine.torch
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[int, int | BaseException | None]] = asyncio.Queue()

    def sink(row: int) -> Callable[[int | BaseException | None], None]:
        def put(item: int | BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):  # the event loop may be gone after a cancel
                loop.call_soon_threadsafe(inbox.put_nowait, (row, item))

        return put

    vocab = int(engine.model.config.get_text_config().vocab_size)
    stop_ids = stop_token_ids(generation, engine.tokenizer, engine.model)
    generator = None
    if generation.seed is not None and generation.sampling:
        generator = torch.Generator(device=engine.device).manual_seed(generation.seed)
    n = generation.n if samples else 1
    recorder = ScoreRecorder(n, generation.top_logprobs) if samples and generation.logprobs else None
    processors = build_processors(generation, engine.tokenizer, vocab, len(prompt))  # stateless: shared
    group = object() if n > 1 else None
    requests = [
        Request(
            prompt=prompt,
            max_new_tokens=generation.max_new_tokens,
            stop_ids=frozenset(stop_ids),
            on_token=sink(row),
            on_done=sink(row),
            processors=processors,
            sample=generation.sampling,
            generator=generator,
            should_stop=should_stop,
            on_scores=_recording(recorder, row) if recorder is not None else None,
            group=group,
        )
        for row in range(n)
    ]
    deltas = TextDeltas(engine.tokenizer, generation)
    scored = recorder if n == 1 else None  # one answer's log-probabilities go out with its text
    taken = 0  # tokens whose log-probabilities went out

    def scores_up_to(count: int) -> list[TokenLogprob]:
        nonlocal taken
        assert scored is not None
        entries = scored.logprobs(0, count, engine.tokenizer, stop_ids, start=taken) if count > taken else []
        taken = max(taken, count)
        return entries

    scheduler.submit_group(requests)
    done = 0
    try:
        while done < n:
            row, item = await inbox.get()
            if item is None:
                done += 1
            elif not isinstance(item, int):
                raise item
            elif row == 0 and (delta := deltas.add(item)):
                yield ScoredDelta(delta, scores_up_to(len(deltas.tokens))) if scored is not None else delta
    finally:
        for request in requests:
            if not request.finished:
                scheduler.cancel(request)  # the consumer went away: free the row at the next step
    answers = [engine.finish(prompt, r.tokens, generation, stop_ids) for r in requests]
    answer, _ = cut_at_stop(deltas.text(), generation.stop_strings)
    rest = deltas.rest(answer)
    if scored is not None:
        if (last := scores_up_to(len(requests[0].tokens))) or rest:
            yield ScoredDelta(rest, last)
    elif rest:
        yield rest
    if not samples:
        yield answers[0]
        return
    tokenizer = engine.tokenizer
    yield [
        (*finished, recorder.logprobs(row, len(r.tokens), tokenizer, stop_ids) if recorder is not None else None)
        for row, (finished, r) in enumerate(zip(answers, requests, strict=True))
    ]


def _recording(recorder: ScoreRecorder, row: int) -> Callable[[Any, Any], None]:
    """A row's ``on_scores``: its processed scores and chosen token go to ``recorder`` as sequence ``row``."""
    return lambda scores, token: recorder([row], scores, token)


async def threaded(engine: LoadedModel, lock: threading.Lock, prompt: list[int], generation: GenerationParams
                   ) -> AsyncGenerator[Item, None]:  # fmt: skip
    """Stream one answer with :func:`stream_tokens` in a thread, holding ``lock`` (one at a time)."""
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    cancel = threading.Event()  # set when the consumer stops listening (Ctrl-C in chat)

    def put(item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop may be gone after a cancel
            loop.call_soon_threadsafe(inbox.put_nowait, item)

    def produce() -> None:
        try:
            with lock:
                for item in stream_tokens(engine, prompt, generation, cancel):
                    put(item)
        except BaseException as exc:
            put(exc)
        put(None)

    threading.Thread(target=produce, name="infermux-native-stream", daemon=True).start()
    try:
        while (item := await inbox.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancel.set()


class _QueueStreamer(TextStreamer):
    """Puts each finalized piece of text on a queue."""

    def __init__(self, tokenizer: Any, sink: queue.Queue[Any], skip_special_tokens: bool) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=skip_special_tokens)
        self.sink = sink

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.sink.put(text)


class _Cancelled(StoppingCriteria):
    """Ends generation once ``flag`` is set (the chat's Ctrl-C), so the model is free for the next turn."""

    def __init__(self, flag: threading.Event) -> None:
        self.flag = flag

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.flag.is_set(), dtype=torch.bool, device=input_ids.device)


def stream_tokens(
    engine: LoadedModel,
    prompt: list[int],
    generation: GenerationParams,
    cancel: threading.Event | None = None,
) -> Iterator[str | tuple[str, Usage, FinishReason]]:
    """Yield text deltas, then ``(final_text, usage, finish_reason)``; the deltas add up to the answer.
    Setting ``cancel`` ends generation at the next token."""
    torch = engine.torch
    ids, mask = engine.batch_tensors([prompt])
    vocab = int(engine.model.config.get_text_config().vocab_size)
    processors = build_processors(generation, engine.tokenizer, vocab, ids.shape[1])
    stop_ids = stop_token_ids(generation, engine.tokenizer, engine.model)
    if generation.seed is not None:
        torch.manual_seed(generation.seed)
    pieces: queue.Queue[Any] = queue.Queue()
    streamer = _QueueStreamer(engine.tokenizer, pieces, generation.skip_special_tokens)
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            with torch.inference_mode():
                box["output"] = engine.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=generation.max_new_tokens,
                    do_sample=generation.sampling,
                    logits_processor=processors,
                    eos_token_id=stop_ids,
                    pad_token_id=engine.tokenizer.pad_token_id,
                    stop_strings=generation.stop_strings or None,
                    tokenizer=engine.tokenizer if generation.stop_strings else None,
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)]) if cancel is not None else None,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    min_p=None,
                )
        except BaseException as exc:
            box["error"] = exc
        finally:
            pieces.put(None)

    worker = threading.Thread(target=run, name="infermux-native-generate", daemon=True)
    worker.start()
    hold = max((len(s) for s in generation.stop_strings or []), default=1) - 1
    text, shown, stopped = "", 0, False
    while (piece := pieces.get()) is not None:
        if stopped:
            continue
        text += piece
        text, stopped = cut_at_stop(text, generation.stop_strings)
        safe = len(text) if stopped else max(shown, len(text) - hold)
        if safe > shown:
            yield text[shown:safe]
            shown = safe
    worker.join()
    if "error" in box:
        raise box["error"]
    tokens = box["output"][0, ids.shape[1] :].tolist()
    cut = next((i + 1 for i, token in enumerate(tokens) if token in stop_ids), len(tokens))
    _, usage, reason = engine.finish(prompt, tokens[:cut], generation, stop_ids)
    if len(text) > shown:
        yield text[shown:]
    if not generation.exclude_prompt_from_response:
        text = engine.tokenizer.decode(prompt, skip_special_tokens=generation.skip_special_tokens) + text
    yield (text, usage, reason)
