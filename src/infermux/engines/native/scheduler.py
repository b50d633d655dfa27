"""Concurrent NATIVE streams decoded together: one thread owns the model; requests join between steps.

:meth:`StreamScheduler.submit` puts a request in an inbox. Between two decode steps the decoder thread
admits what waits there (continuous batching): the new prompts are prefilled (grouped by length, with
:mod:`.decode`'s prefill; a prompt that continues the last answer starts from its KV cache, see
:class:`PromptCache`), and their KV caches are joined to the running batch, the narrower side left-padded
under the attention mask. Each step then picks one token per row with that row's own logits processors,
stop ids, stop strings and token budget, so requests with different settings share a step. A finished or
cancelled row leaves the batch (and the KV cache) before the next step. One request's ``n`` answers are
``n`` rows admitted in the same step (a *group*); a row may report its processed scores each step
(log-probabilities, ``on_scores``).

Every row computes what it would alone: processors see only the row's own prompt and tokens, a seeded
row samples from its own generator (a seeded group's rows draw together from theirs, as the batch decode
draws a request's n copies), and left padding is masked with matching position ids (float32 answers
equal the answers alone; lower precisions may round differently with the batch's shape).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache, LogitsProcessorList

from infermux.engines.local.decoder_thread import DecoderThread
from infermux.engines.native.decode import _GrowingLayer, _prefill, _trim_left_padding

__all__ = ["PromptCache", "Request", "StreamScheduler"]

# Spare room (tokens) in the joined KV buffers; they grow in place beyond it (see ``_GrowingLayer``).
_SPARE = 128

Layers = list[tuple[torch.Tensor, torch.Tensor]]


class PromptCache:
    """The KV cache (and its tokens) of the last finished answer, kept for the chat's next turn."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        #: Per layer, (keys, values) of ``tokens``, batch of one; None when nothing is kept.
        self.cache: Layers | None = None
        #: Prompt tokens the model evaluated for the last admitted request (the rest came from the cache).
        self.last_evaluated = 0

    def take(self, prompt: list[int]) -> tuple[Layers | None, int]:
        """The kept cache cut to its longest prefix of ``prompt`` (at least one token left to evaluate),
        and that prefix's length; ``(None, 0)`` when nothing can be reused."""
        cache, tokens = self.cache, self.tokens
        self.cache, self.tokens = None, []  # taken: a failure below must not leave a half-used cache
        shared = 0
        for a, b in zip(tokens, prompt[: len(prompt) - 1], strict=False):
            if a != b:
                break
            shared += 1
        if cache is None or shared == 0:
            return None, 0
        return [(k[:, :, :shared], v[:, :, :shared]) for k, v in cache], shared

    def keep(self, tokens: list[int], cache: Layers) -> None:
        """Keep ``cache``, which holds the first ``cache[0][0].shape[2]`` of ``tokens``."""
        self.tokens, self.cache = tokens[: cache[0][0].shape[2]], cache


@dataclass(eq=False)
class Request:
    """One stream: its prompt, settings, and where its tokens go (called on the decoder thread)."""

    prompt: list[int]
    max_new_tokens: int
    stop_ids: frozenset[int]
    on_token: Callable[[int], None]
    on_done: Callable[[BaseException | None], None]
    processors: LogitsProcessorList = field(default_factory=LogitsProcessorList)
    sample: bool = False
    generator: torch.Generator | None = None
    should_stop: Callable[[list[int]], bool] | None = None
    #: Called with the row's processed scores ([1, vocab]) and chosen token ([1]) at each step (logprobs).
    on_scores: Callable[[torch.Tensor, torch.Tensor], None] | None = None
    #: Requests with the same ``group`` (one request's n answers) are admitted in the same step.
    group: object | None = None
    tokens: list[int] = field(default_factory=list)
    cancelled: bool = False
    finished: bool = False

    def ends_with(self, token: int) -> bool:
        return (
            token in self.stop_ids
            or len(self.tokens) >= self.max_new_tokens
            or (self.should_stop is not None and self.should_stop(self.tokens))
        )


@dataclass
class _Batch:
    """Rows decoding together: KV cache, attention mask and last positions, next-token logits."""

    cache: Any
    mask: torch.Tensor  # [rows, cached columns]
    last: torch.Tensor  # [rows, 1]: position of each row's last evaluated token
    logits: torch.Tensor  # [rows, vocab], float32
    rows: list[Request]

    def select(self, keep: list[int]) -> None:
        index = torch.tensor(keep, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask, self.last, self.logits = self.mask[index], self.last[index], self.logits[index]
        self.rows = [self.rows[i] for i in keep]
        self.mask = _trim_left_padding(self.cache, self.mask)


class StreamScheduler(DecoderThread[Request]):
    """Owns the model's streaming decode once started: only its thread runs the batch."""

    def __init__(self, model: Any, pad_id: int, lock: threading.Lock, prompt_cache: PromptCache | None,
                 max_rows: int = 32) -> None:  # fmt: skip
        super().__init__("NATIVE")
        self.model, self.pad_id, self.lock, self.prompt_cache = model, pad_id, lock, prompt_cache
        self.max_rows = max_rows
        self.device = next(model.parameters()).device
        self.stats = {"steps": 0, "max_rows": 0, "admitted": 0, "joined_mid_decode": 0, "cancelled": 0,
                      "generated_tokens": 0, "prompt_tokens_evaluated": 0}  # fmt: skip
        self._batch: _Batch | None = None

    def submit_group(self, requests: list[Request]) -> None:
        """Queue ``requests`` (one request's n answers) at once, next to each other in the inbox."""
        with self._wake:  # reentrant: the decoder thread sees all of them or none
            for request in requests:
                self.submit(request)

    @property
    def active(self) -> int:
        batch = self._batch
        return len(batch.rows) if batch is not None else 0

    # ------------------------------------------------------------------ the decoder thread
    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._inbox and self._batch is None:
                    self._wake.wait()
                if self._closed:
                    break
                # Cancelled requests leave the inbox at once, even while the batch is full.
                waiting = [r for r in self._inbox if not r.cancelled]
                room = _fit(waiting, max(0, self.max_rows - self.active), self._batch is None)
                inbox = [r for r in self._inbox if r.cancelled] + waiting[:room]
                self._inbox = waiting[room:]
            with self.lock, torch.inference_mode():
                try:
                    if inbox:
                        self._admit(inbox)
                    if self._batch is not None:
                        self._step(self._batch)
                except Exception as exc:  # the model failed: every row in flight fails with it
                    rows, self._batch = self._batch.rows if self._batch is not None else [], None
                    for request in [*rows, *inbox]:
                        _finish(request, exc)
        closed = RuntimeError("the NATIVE engine was closed before this request finished")
        for request in [*self._inbox, *(self._batch.rows if self._batch is not None else [])]:
            _finish(request, closed)
        self._inbox, self._batch = [], None

    def _admit(self, inbox: list[Request]) -> None:
        """Prefill the waiting requests and join them to the running batch."""
        for request in inbox:
            if request.cancelled:
                self.stats["cancelled"] += 1
                _finish(request, None)
        inbox = [r for r in inbox if not r.cancelled]
        if not inbox:
            return
        try:
            pieces = self._prefill(inbox)
        except Exception as exc:  # this admission's rows fail; the running batch carries on
            for request in inbox:
                _finish(request, exc)
            return
        if self._batch is not None:
            self.stats["joined_mid_decode"] += len(inbox)
            pieces.insert(0, self._batch)
        self.stats["admitted"] += len(inbox)
        self._batch = pieces[0] if len(pieces) == 1 else self._join(pieces)

    def _prefill(self, inbox: list[Request]) -> list[_Batch]:
        pieces: list[_Batch] = []
        spare = min(max(r.max_new_tokens for r in inbox), _SPARE)
        fresh: list[Request] = []
        for request in inbox:
            kept, shared = self.prompt_cache.take(request.prompt) if self.prompt_cache is not None else (None, 0)
            evaluated = len(request.prompt) - shared
            if self.prompt_cache is not None:
                self.prompt_cache.last_evaluated = evaluated
            self.stats["prompt_tokens_evaluated"] += evaluated
            if kept is None:
                fresh.append(request)
            else:
                pieces.append(self._continue(request, kept, shared, spare))
        if fresh:
            prompts = [r.prompt for r in fresh]
            capacity = max(len(p) for p in prompts) + spare
            logits, cache, mask, last, _, order = _prefill(self.model, prompts, self.pad_id, capacity, self.device)
            pieces.append(_Batch(cache, mask, last, logits, [fresh[i] for i in order]))
        return pieces

    def _continue(self, request: Request, kept: Layers, shared: int, spare: int) -> _Batch:
        """Prefill ``request`` after the first ``shared`` tokens of its prompt, whose KV cache is ``kept``."""
        prompt, device = request.prompt, self.device
        cache = DynamicCache(config=self.model.config)
        cache.layers = [_GrowingLayer(k, v, len(prompt) + spare) for k, v in kept]
        mask = torch.ones((1, len(prompt)), dtype=torch.long, device=device)
        out = self.model(
            input_ids=torch.tensor([prompt[shared:]], device=device),
            attention_mask=mask,
            position_ids=torch.arange(shared, len(prompt), device=device)[None],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1].to(dtype=torch.float32)
        return _Batch(cache, mask, torch.tensor([[len(prompt) - 1]], device=device), logits, [request])

    def _join(self, pieces: list[_Batch]) -> _Batch:
        """One batch from several: each piece's cache and mask left-padded to the widest."""
        width = max(p.mask.shape[1] for p in pieces)
        pads = [width - p.mask.shape[1] for p in pieces]
        spare = min(max(r.max_new_tokens - len(r.tokens) for p in pieces for r in p.rows), _SPARE)
        pad = torch.nn.functional.pad

        def stack(tensors: list[torch.Tensor]) -> torch.Tensor:
            return torch.cat([pad(t, (0, 0, n, 0)) for t, n in zip(tensors, pads, strict=True)])

        cache = DynamicCache(config=self.model.config)
        cache.layers = [
            _GrowingLayer(stack([p.cache.layers[i].keys for p in pieces]),
                          stack([p.cache.layers[i].values for p in pieces]), width + spare)
            for i in range(len(pieces[0].cache.layers))
        ]  # fmt: skip
        return _Batch(
            cache,
            torch.cat([pad(p.mask, (n, 0)) for p, n in zip(pieces, pads, strict=True)]),
            torch.cat([p.last for p in pieces]),
            torch.cat([p.logits for p in pieces]),
            [r for p in pieces for r in p.rows],
        )

    def _step(self, batch: _Batch) -> None:
        """Drop cancelled rows, pick each row's next token, drop finished rows, evaluate the rest."""
        cancelled = [i for i, r in enumerate(batch.rows) if r.cancelled]
        if cancelled:
            self.stats["cancelled"] += len(cancelled)
            if not self._leave(cancelled):
                return
        self.stats["steps"] += 1
        self.stats["max_rows"] = max(self.stats["max_rows"], len(batch.rows))
        tokens = self._choose(batch)
        done: list[int] = []
        for i, (request, token) in enumerate(zip(batch.rows, tokens.tolist(), strict=True)):
            request.tokens.append(token)
            request.on_token(token)
            if request.ends_with(token):
                done.append(i)
        self.stats["generated_tokens"] += len(batch.rows)
        if done:
            self._remember(batch, done[-1])  # the last answer to finish is the likeliest next turn
            keep = [i for i in range(len(batch.rows)) if i not in set(done)]
            if not self._leave(done):
                return
            tokens = tokens[torch.tensor(keep, device=tokens.device)]
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((batch.mask.shape[0], 1))], dim=-1)
        batch.last = batch.last + 1
        out = self.model(input_ids=tokens[:, None], attention_mask=batch.mask, position_ids=batch.last,
                         past_key_values=batch.cache, use_cache=True)  # fmt: skip
        batch.logits = out.logits[:, -1].to(dtype=torch.float32)

    def _leave(self, leaving: list[int]) -> bool:
        """Take rows ``leaving`` out of the batch, then tell their requests they are done (so a caller who
        sees the end also sees the row gone); False when no row is left (the batch is gone)."""
        assert self._batch is not None
        batch, gone = self._batch, set(leaving)
        requests = [batch.rows[i] for i in leaving]
        keep = [i for i in range(len(batch.rows)) if i not in gone]
        if keep:
            batch.select(keep)
        else:
            self._batch = None
        for request in requests:
            _finish(request, None)
        return bool(keep)

    def _choose(self, batch: _Batch) -> torch.Tensor:
        """Each row's next token: greedy rows by one argmax; rows with processors or sampling alone, except
        that rows sharing a generator (one seeded request's n answers) draw together, in batch order, as
        :func:`.decode.decode` draws its batch, so they pick what they pick there."""
        tokens = torch.argmax(batch.logits, dim=-1)
        scored: dict[int, Any] = {}
        draws: dict[int, list[int]] = {}
        for i, request in enumerate(batch.rows):
            if not request.processors and not request.sample and request.on_scores is None:
                continue
            scores: Any = batch.logits[i : i + 1]
            if request.processors:
                history: Any = torch.tensor([request.prompt + request.tokens], device=scores.device)
                scores = request.processors(history, scores)
            scored[i] = scores
            if request.sample:
                draws.setdefault(id(request.generator) if request.generator is not None else -1 - i, []).append(i)
            elif request.processors:
                tokens[i] = torch.argmax(scores, dim=-1)[0]
        for rows in draws.values():
            probs = torch.softmax(torch.cat([scored[i] for i in rows]), dim=-1)
            picked = torch.multinomial(probs, num_samples=1, generator=batch.rows[rows[0]].generator)[:, 0]
            tokens[torch.tensor(rows, device=tokens.device)] = picked
        for i, scores in scored.items():
            if (record := batch.rows[i].on_scores) is not None:
                record(scores, tokens[i : i + 1])
        return tokens

    def _remember(self, batch: _Batch, i: int) -> None:
        """Keep row ``i``'s KV cache (its real columns) for a next turn that continues its answer."""
        if self.prompt_cache is None:
            return
        valid = batch.mask[i].bool()
        kept = [(layer.keys[i][:, valid][None], layer.values[i][:, valid][None]) for layer in batch.cache.layers]
        request = batch.rows[i]
        self.prompt_cache.keep(request.prompt + request.tokens, kept)


def _fit(waiting: list[Request], room: int, empty: bool) -> int:
    """How many of ``waiting`` to admit in order within ``room`` rows: whole groups only (n answers start
    together); a group larger than the batch (n > max_rows) is admitted alone into an empty batch."""
    taken = 0
    while taken < len(waiting):
        group, size = waiting[taken].group, 1
        while group is not None and taken + size < len(waiting) and waiting[taken + size].group is group:
            size += 1
        if taken + size > room:
            return size if taken == 0 and empty else taken
        taken += size
    return taken


def _finish(request: Request, error: BaseException | None) -> None:
    if not request.finished:
        request.finished = True
        request.on_done(error)
