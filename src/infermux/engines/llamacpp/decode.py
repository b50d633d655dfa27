"""Several conversations decoded together in one llama.cpp context (continuous batching).

A :class:`MultiSequenceDecoder` owns a second llama.cpp context on the model a ``Llama`` object
loaded, with ``n_seq_max`` sequence slots, each with its own KV stream (``kv_unified=False``: a
sequence attends only to itself, laid out as if it were alone). Every :meth:`~MultiSequenceDecoder.step`
admits waiting requests into free slots, then puts the next token of every generating sequence into one
``llama_decode`` call and samples each sequence's token with its own sampler chain (penalty history,
grammar state and random state are per sequence). A finished sequence frees its slot for the next
request, so slots stay busy whatever the answer lengths, and requests may arrive between steps.

Prompt tokens are evaluated once where they can be (see :mod:`.prefix`): a slot keeps the KV of the
prompt it last held, so a prompt that starts like it (the next chat turn, the next row with the same
system prompt) evaluates only the rest; a prompt that shares a prefix with another slot gets that slot's KV copied
(``llama_memory_seq_cp``) and evaluates only the rest; requests admitted together that share a prefix have
it evaluated by one of them, then copied. The prompt suffixes of all admitted requests go into shared
``llama_decode`` calls.

The per-token semantics mirror llama-cpp-python's ``create_completion``: the same sampler chain
order (logit bias, penalties over the last 64 generated tokens, grammar, then greedy or top-p / min-p
/ temperature / seeded distribution), an end-of-generation token ends the answer without being part
of it, stop strings cut the text at their first occurrence, and text is the UTF-8 decoding (invalid
bytes dropped) of the generated tokens' pieces.

A request with images (``Request.media``, :mod:`.media`) has its image chunks evaluated into its own
sequence by the projector, between its text runs; it prefills alone, not in a shared call.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from infermux.engines.llamacpp.prefix import Admission, plan_admissions
from infermux.engines.seeds import LLAMA_CPP_SEEDS, fold_seed

if TYPE_CHECKING:
    from infermux.engines.llamacpp.media import MediaPrompt, Projector

__all__ = ["Cancelled", "DecodeResult", "MultiSequenceDecoder", "Request", "SamplingSpec"]

PENALTY_LAST_N = 64  # llama-cpp-python's default window (Llama.last_n_tokens_size)
DEFAULT_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: a random seed


@dataclass(frozen=True)
class SamplingSpec:
    """How to pick each token and when to stop (one per generation call)."""

    greedy: bool = True
    temperature: float = 0.0
    top_p: float = 1.0
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()
    grammar: str | None = None
    stop_strings: tuple[str, ...] = ()
    stop_token_ids: frozenset[int] = frozenset()
    special: bool = False  # render special tokens into the text (skip_special_tokens=False)


@dataclass
class DecodeResult:
    text: str
    tokens: list[int]
    prompt_tokens: int
    finish_reason: str  # "stop" or "length"
    prompt_evaluated: int = 0  # prompt tokens actually computed (the rest came from cached KV)


class Cancelled(Exception):
    """The request was cancelled before it finished (its consumer went away)."""


#: Called with new text as it becomes final; used for streaming.
OnText = Callable[[str], None]
#: Called once with the request's outcome.
OnDone = Callable[["DecodeResult | Exception"], None]
#: Called with each sampled token and a pointer to the logits it was sampled from (log-probabilities).
OnLogits = Callable[[int, Any], None]


@dataclass(eq=False)
class Request:
    """One prompt to answer; ``on_done`` receives the result (or the per-request error)."""

    prompt: list[int]
    max_new: int
    spec: SamplingSpec
    on_done: OnDone
    on_text: OnText | None = None
    on_logits: OnLogits | None = None
    keep_answer: bool = False  # the answer's KV stays reusable: a chat's next turn evaluates only its new part
    media: MediaPrompt | None = None  # the images; ``prompt`` is then its keys (.media)
    cancelled: bool = False  # set from any thread; honoured between steps
    finished: bool = False
    slot: int = -1
    sampler: Any = None
    evaluated: int = 0
    tokens: list[int] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    text: str = ""
    emitted: int = 0  # characters already streamed

    @property
    def cells(self) -> int:
        """The prompt's KV cells (an image chunk may take more cells than positions)."""
        return len(self.prompt) + (self.media.extra_cells if self.media else 0)


class MultiSequenceDecoder:
    """Answers many prompts at once on ``llama``'s model with ``n_slots`` sequences in flight.

    Not thread-safe: one thread drives it (:meth:`generate`, or :meth:`submit` + :meth:`step`).
    Counters for tests and benchmarks: ``prompt_tokens_evaluated``, ``max_active`` (most sequences in
    one decode step), ``steps``.
    """

    def __init__(self, llama: Any, n_slots: int, n_ctx_seq: int, projector: Projector | None = None) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._llama = llama
        self.projector = projector
        self.n_slots = n_slots
        self.n_ctx_seq = n_ctx_seq
        params = llama_cpp.llama_context_params.from_buffer_copy(llama.context_params)
        params.n_seq_max = n_slots
        params.kv_unified = False
        params.n_ctx = n_ctx_seq * n_slots
        params.n_batch = max(int(params.n_batch), n_slots)
        params.n_ubatch = max(int(params.n_ubatch), n_slots)
        self.n_batch = int(params.n_batch)
        self._ctx = llama_cpp.llama_init_from_model(llama.model, params)
        if not self._ctx:
            raise MemoryError(f"llama.cpp could not create a context for {n_slots} sequences of {n_ctx_seq} tokens")
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._cached: list[list[int]] = [[] for _ in range(n_slots)]  # tokens whose KV each slot holds
        self._exact = [0] * n_slots  # how many of them were computed as prompt tokens (reusable, see prefix)
        self._owner: list[Request | None] = [None] * n_slots
        self.waiting: list[Request] = []
        self.active: list[Request] = []
        self._admitting: list[Request] = []
        self.prompt_tokens_evaluated = 0
        self.max_active = 0
        self.steps = 0

    def close(self) -> None:
        if self._ctx:
            for req in self.active:
                self._lib.llama_sampler_free(req.sampler)
            self.active = []
            self._lib.llama_batch_free(self._batch)
            self._lib.llama_free(self._ctx)
            self._ctx = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # ------------------------------------------------------------------ requests
    def submit(self, request: Request) -> None:
        """Queue ``request``; it joins the running sequences at the next :meth:`step`."""
        if not request.prompt:
            self._done(request, ValueError("the prompt is empty"))
            return
        if (cells := request.cells) >= self.n_ctx_seq:
            self._done(
                request,
                ValueError(
                    f"the prompt has {cells} tokens but the context holds {self.n_ctx_seq}; "
                    "raise model.model_kwargs.n_ctx (or model_max_length) or shorten the conversation."
                ),
            )
            return
        request.max_new = min(request.max_new, self.n_ctx_seq - cells)
        self.waiting.append(request)

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.active)

    def fail_all(self, error: Exception) -> None:
        """End every request in flight with ``error`` and forget all cached KV (after a failed decode)."""
        for req in [*self.active, *self._admitting, *self.waiting]:
            if req.sampler is not None:
                self._lib.llama_sampler_free(req.sampler)
                req.sampler = None
            self._done(req, error)
        self.active, self.waiting, self._admitting = [], [], []
        self._owner = [None] * self.n_slots
        self._cached = [[] for _ in range(self.n_slots)]
        self._exact = [0] * self.n_slots
        if self._ctx:
            self._lib.llama_memory_clear(self._mem, True)

    def forget_cache(self) -> None:
        """Stop reusing the KV the slots hold (benchmarks start each run cold). Call only while idle."""
        self._exact = [0] * self.n_slots

    @staticmethod
    def _done(req: Request, outcome: DecodeResult | Exception) -> None:
        if not req.finished:
            req.finished = True
            req.on_done(outcome)

    def generate(
        self, prompts: Sequence[list[int]], max_new_tokens: int, spec: SamplingSpec
    ) -> list[DecodeResult | Exception]:
        """Answer each prompt (token ids, template applied); a per-prompt problem is returned, not raised."""
        results: list[DecodeResult | Exception] = [RuntimeError("not run")] * len(prompts)
        for i, prompt in enumerate(prompts):

            def done(result: DecodeResult | Exception, i: int = i) -> None:
                results[i] = result

            self.submit(Request(list(prompt), max_new_tokens, spec, done))
        while self.busy:
            self.step()
        return results

    # ------------------------------------------------------------------ one step
    def step(self) -> None:
        """Drop cancelled requests, admit waiting ones into free slots, decode one token for each."""
        for req in [r for r in self.waiting if r.cancelled]:
            self.waiting.remove(req)
            self._done(req, Cancelled())
        for req in [r for r in self.active if r.cancelled]:
            self._release(req, Cancelled())
        free = [s for s in range(self.n_slots) if self._owner[s] is None]
        if self.waiting and free:
            self._admitting, self.waiting = self.waiting[: len(free)], self.waiting[len(free) :]
            self._admit(self._admitting, free)
            self._admitting = []
        if not self.active:
            return
        # llama.cpp (one KV stream per sequence) splits a call into passes over runs of consecutive sequence
        # ids in batch order: slot order keeps the runs long, so a step is one pass where the slots allow.
        self.active.sort(key=lambda r: r.slot)
        batch = self._batch
        for n, req in enumerate(self.active):
            token = req.tokens[-1]
            self._add(n, token, len(self._cached[req.slot]), req.slot, True)
            self._cached[req.slot].append(token)
        batch.n_tokens = len(self.active)
        self.max_active = max(self.max_active, len(self.active))
        self.steps += 1
        self._decode()
        for i, req in enumerate(list(self.active)):
            self._step(req, self._sample(req, i))

    def _admit(self, requests: list[Request], free: list[int]) -> None:
        """Give each request a slot, reuse or copy what KV it can, evaluate the rest of the prompts."""
        reusable = [cached[:exact] for cached, exact in zip(self._cached, self._exact, strict=True)]
        spans = [r.media.spans if r.media else () for r in requests]
        plan = plan_admissions([r.prompt for r in requests], reusable, free, spans)
        for wave in plan.waves:
            started: list[tuple[Request, Admission]] = []
            for adm in wave:  # copies first: a source's KV must be copied before it is trimmed
                if adm.source is not None and adm.source != adm.slot:
                    self._lib.llama_memory_seq_cp(self._mem, adm.source, adm.slot, -1, -1)
                    self._cached[adm.slot] = self._cached[adm.source][: adm.keep]
                    self._exact[adm.slot] = adm.keep
            for adm in wave:
                req = requests[adm.index]
                req.slot = adm.slot
                self._owner[adm.slot] = req
                self._lib.llama_memory_seq_rm(self._mem, adm.slot, adm.keep, -1)
                del self._cached[adm.slot][adm.keep :]
                self._exact[adm.slot] = adm.keep
                try:
                    req.sampler = self._make_sampler(req.spec)
                except ValueError as exc:
                    self._owner[adm.slot] = None
                    self._done(req, exc)
                    continue
                started.append((req, adm))
            self._prefill(started)

    def _prefill(self, started: list[tuple[Request, Admission]]) -> None:
        """Evaluate the uncached prompt tokens of each request, then sample its first token.

        llama.cpp splits a multi-sequence batch into pieces with the same number of tokens per sequence,
        and a token computed alone in its piece comes out slightly different (see ``prefix``). So
        prompts whose remaining lengths are equal (and at least 2) share a call, where every sequence's
        piece is its whole remainder; any other prompt gets calls of its own, in pieces of at most
        ``n_batch`` tokens and never a last piece of one token.
        """
        groups: dict[int, list[tuple[Request, int]]] = {}
        for req, adm in started:
            rest = len(req.prompt) - adm.keep
            req.evaluated = rest
            self.prompt_tokens_evaluated += rest
            if req.media is not None:
                self._prefill_media(req, adm.keep)
                continue
            groups.setdefault(rest, []).append((req, adm.keep))
        for rest, members in groups.items():
            per_call = self.n_batch // rest if rest >= 2 else 1
            for first in range(0, len(members), max(1, per_call)):
                chunk = members[first : first + max(1, per_call)]
                if len(chunk) == 1:
                    self._prefill_one(*chunk[0])
                    continue
                n = 0
                for req, keep in chunk:
                    for pos in range(keep, len(req.prompt)):
                        self._add(n, req.prompt[pos], pos, req.slot, pos == len(req.prompt) - 1)
                        n += 1
                self._batch.n_tokens = n
                self._decode()
                for k, (req, keep) in enumerate(chunk):
                    self._started(req, keep, (k + 1) * rest - 1)

    def _prefill_one(self, req: Request, keep: int, end: int | None = None, sample: bool = True) -> None:
        """Evaluate ``req.prompt[keep:end]`` alone, in pieces of at most ``n_batch`` tokens (never a last piece
        of one token), then (``sample``) sample the first answer token."""
        rest = req.prompt[keep:end]
        done = 0
        while done < len(rest):
            size = min(self.n_batch, len(rest) - done)
            if len(rest) - done - size == 1:
                size -= 1
            for k in range(size):
                self._add(k, rest[done + k], keep + done + k, req.slot, done + k == len(rest) - 1)
            self._batch.n_tokens = size
            self._decode()
            done += size
        if sample:
            self._started(req, keep, self._batch.n_tokens - 1)

    def _prefill_media(self, req: Request, keep: int) -> None:
        """A prompt with images: its text runs as :meth:`_prefill_one` does, each image chunk evaluated into the
        slot by the projector. A failed image fails this request alone."""
        assert req.media is not None and self.projector is not None
        try:
            for start, end, chunk in req.media.pieces(keep):
                if chunk is not None:
                    self.projector.evaluate(self._ctx, chunk, start, req.slot, self.n_batch)
                else:
                    self._prefill_one(req, start, end, sample=False)
        except ValueError as exc:  # ImageError: the slot holds the prompt's start only
            self._lib.llama_memory_seq_rm(self._mem, req.slot, keep, -1)
            self._lib.llama_sampler_free(req.sampler)
            req.sampler = None
            self._owner[req.slot] = None
            self._done(req, exc)
            return
        self._started(req, keep, self._batch.n_tokens - 1)  # the prompt ends with text (.media)

    def _started(self, req: Request, keep: int, index: int) -> None:
        """The prompt is in the slot: record it, then sample the first token from logits row ``index``."""
        self._cached[req.slot].extend(req.prompt[keep:])
        self._exact[req.slot] = len(self._cached[req.slot])
        self.active.append(req)
        self._step(req, self._sample(req, index))

    def _sample(self, req: Request, index: int) -> int:
        token = int(self._lib.llama_sampler_sample(req.sampler, self._ctx, index))
        if req.on_logits is not None:
            req.on_logits(token, self._lib.llama_get_logits_ith(self._ctx, index))
        return token

    def _decode(self) -> None:
        status = self._lib.llama_decode(self._ctx, self._batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")

    def _add(self, n: int, token: int, pos: int, slot: int, logits: bool) -> None:
        batch = self._batch
        batch.token[n] = token
        batch.pos[n] = pos
        batch.n_seq_id[n] = 1
        batch.seq_id[n][0] = slot
        batch.logits[n] = logits

    # ------------------------------------------------------------------ per token
    def _step(self, req: Request, token: int) -> None:
        finish = self._accept(req, token)
        if finish is not None:
            self._release(req, self._result(req, finish))
        elif req.on_text is not None:
            self._stream(req)

    def _release(self, req: Request, outcome: DecodeResult | Exception) -> None:
        """Free the request's sampler and slot (its prompt KV stays for the next prompt that starts alike;
        with ``keep_answer``, the KV of the answer's tokens too)."""
        self._lib.llama_sampler_free(req.sampler)
        req.sampler = None
        self.active.remove(req)
        self._owner[req.slot] = None
        if req.keep_answer and not isinstance(outcome, Exception):
            self._exact[req.slot] = len(self._cached[req.slot])
        self._done(req, outcome)

    def _accept(self, req: Request, token: int) -> str | None:
        spec = req.spec
        if self._lib.llama_vocab_is_eog(self._vocab, token) or token in spec.stop_token_ids:
            return "stop"
        req.tokens.append(token)
        req.data += self._piece(token, spec.special)
        req.text = req.data.decode("utf-8", errors="ignore")
        if spec.stop_strings:
            cuts = [pos for pos in (req.text.find(s) for s in spec.stop_strings) if pos >= 0]
            if cuts:
                req.text = req.text[: min(cuts)]
                return "stop"
        if len(req.tokens) >= req.max_new:
            return "length"
        return None

    def _piece(self, token: int, special: bool) -> bytes:
        buffer = ctypes.create_string_buffer(64)
        n = self._lib.llama_token_to_piece(self._vocab, token, buffer, 64, 0, special)
        if n < 0:
            buffer = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, token, buffer, -n, 0, special)
        return bytes(buffer.raw[:n])

    def _result(self, req: Request, finish: str) -> DecodeResult:
        if req.on_text is not None and len(req.text) > req.emitted:
            req.on_text(req.text[req.emitted :])
        return DecodeResult(req.text, req.tokens, req.cells, finish, req.evaluated)

    def _stream(self, req: Request) -> None:
        """Emit the text that no stop string can still claim."""
        assert req.on_text is not None
        hold = 0
        for stop in req.spec.stop_strings:
            for k in range(min(len(stop) - 1, len(req.text)), 0, -1):
                if req.text.endswith(stop[:k]):
                    hold = max(hold, k)
                    break
        safe = len(req.text) - hold
        if safe > req.emitted:
            req.on_text(req.text[req.emitted : safe])
            req.emitted = safe

    # ------------------------------------------------------------------ sampling
    def _make_sampler(self, spec: SamplingSpec) -> Any:
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if spec.logit_bias:
            biases = (lib.llama_logit_bias * len(spec.logit_bias))()
            for i, (token, bias) in enumerate(spec.logit_bias):
                biases[i].token, biases[i].bias = token, bias
            lib.llama_sampler_chain_add(
                chain, lib.llama_sampler_init_logit_bias(self._n_vocab, len(spec.logit_bias), biases)
            )
        lib.llama_sampler_chain_add(
            chain,
            lib.llama_sampler_init_penalties(
                self._n_vocab, PENALTY_LAST_N, 1.0, spec.frequency_penalty, spec.presence_penalty
            ),
        )
        if spec.grammar is not None:
            grammar = lib.llama_sampler_init_grammar(self._vocab, spec.grammar.encode(), b"root")
            if not grammar:
                lib.llama_sampler_free(chain)
                raise ValueError("llama.cpp rejected the generated grammar:\n" + spec.grammar)
            lib.llama_sampler_chain_add(chain, grammar)
        if spec.greedy:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        else:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(spec.top_p, 1))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_min_p(spec.min_p, 1))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(spec.temperature))
            seed = DEFAULT_SEED if spec.seed is None else fold_seed(spec.seed, *LLAMA_CPP_SEEDS)
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed))
        return chain
