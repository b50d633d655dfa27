"""Several conversations decoded together in one llama.cpp context (continuous batching).

A :class:`MultiSequenceDecoder` owns a second llama.cpp context on the model a ``Llama`` object
loaded, with ``n_seq_max`` sequence slots, each with its own KV stream (``kv_unified=False``: a
sequence attends only to itself, laid out as if it were alone). A prompt entering a free slot is
decoded on its own, exactly as ``Llama.eval`` decodes it; then every step puts the next token of every
generating sequence into one ``llama_decode`` call and samples each sequence's token with its own
sampler chain (penalty history, grammar state and random state are per sequence). A finished sequence
frees its slot for the next prompt, so slots stay busy whatever the answer lengths.

The per-token semantics mirror llama-cpp-python's ``create_completion``: the same sampler chain
order (logit bias, penalties over the last 64 generated tokens, grammar, then greedy or top-p / min-p
/ temperature / seeded distribution), an end-of-generation token ends the answer without being part
of it, stop strings cut the text at their first occurrence, and text is the UTF-8 decoding (invalid
bytes dropped) of the generated tokens' pieces.
"""

from __future__ import annotations

import ctypes
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DecodeResult", "MultiSequenceDecoder", "SamplingSpec"]

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


@dataclass
class _Seq:
    index: int
    prompt: list[int]
    max_new: int
    slot: int = -1
    sampler: Any = None
    tokens: list[int] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    text: str = ""
    emitted: int = 0  # characters already streamed


#: Called with (request index, new text) as text becomes final; used for streaming.
OnText = Callable[[int, str], None]


class MultiSequenceDecoder:
    """Answers many prompts at once on ``llama``'s model with ``n_slots`` sequences in flight."""

    def __init__(self, llama: Any, n_slots: int, n_ctx_seq: int) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._llama = llama
        self.n_slots = n_slots
        self.n_ctx_seq = n_ctx_seq
        params = llama_cpp.llama_context_params.from_buffer_copy(llama.context_params)
        params.n_seq_max = n_slots
        params.kv_unified = False
        params.n_ctx = n_ctx_seq * n_slots
        self.n_batch_prompt = int(params.n_batch)  # prompts are decoded in the library's pieces
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

    def close(self) -> None:
        if self._ctx:
            self._lib.llama_batch_free(self._batch)
            self._lib.llama_free(self._ctx)
            self._ctx = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

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
            seed = DEFAULT_SEED if spec.seed is None else spec.seed & 0xFFFFFFFF
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed))
        return chain

    # ------------------------------------------------------------------ the loop
    def generate(
        self,
        prompts: Sequence[list[int]],
        max_new_tokens: int,
        spec: SamplingSpec,
        on_text: OnText | None = None,
    ) -> list[DecodeResult | Exception]:
        """Answer each prompt (token ids, template applied); a per-prompt problem is returned, not raised."""
        results: list[DecodeResult | Exception | None] = [None] * len(prompts)
        waiting: deque[_Seq] = deque()
        for i, prompt in enumerate(prompts):
            if len(prompt) >= self.n_ctx_seq:
                results[i] = ValueError(
                    f"the prompt has {len(prompt)} tokens but the context holds {self.n_ctx_seq}; "
                    "raise model.model_kwargs.n_ctx (or model_max_length) or shorten the conversation."
                )
            else:
                waiting.append(_Seq(i, prompt, min(max_new_tokens, self.n_ctx_seq - len(prompt))))
        free = list(range(self.n_slots - 1, -1, -1))
        active: list[_Seq] = []
        try:
            while waiting or active:
                while waiting and free:  # admit: prefill alone, sample the first token
                    seq = waiting.popleft()
                    seq.slot = free.pop()
                    try:
                        seq.sampler = self._make_sampler(spec)
                        token = self._prefill(seq)
                    except ValueError as exc:
                        results[seq.index] = exc
                        free.append(seq.slot)
                        continue
                    active.append(seq)
                    self._step(seq, token, spec, on_text, results, active, free)
                if not active:
                    continue
                self._fill_batch(active)
                self._decode()
                for i, seq in enumerate(list(active)):
                    token = self._lib.llama_sampler_sample(seq.sampler, self._ctx, i)
                    self._step(seq, token, spec, on_text, results, active, free)
        finally:
            for seq in active:
                self._lib.llama_sampler_free(seq.sampler)
        return [r if r is not None else RuntimeError("not run") for r in results]

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

    def _prefill(self, seq: _Seq) -> int:
        """Decode the prompt on its own, in the same ``n_batch`` pieces as ``Llama.eval``, and sample.

        Prompts are not mixed into the shared steps: llama.cpp splits a multi-sequence batch into
        equal-length pieces per sequence, and a prompt cut at other points than the library's own would
        be computed in a different order (and could, on a near-tie, pick another greedy token).
        """
        self._lib.llama_memory_seq_rm(self._mem, seq.slot, -1, -1)
        for start in range(0, len(seq.prompt), self.n_batch_prompt):
            piece = seq.prompt[start : start + self.n_batch_prompt]
            for i, token in enumerate(piece):
                self._add(i, token, start + i, seq.slot, start + i == len(seq.prompt) - 1)
            self._batch.n_tokens = len(piece)
            self._decode()
        return int(self._lib.llama_sampler_sample(seq.sampler, self._ctx, self._batch.n_tokens - 1))

    def _fill_batch(self, active: list[_Seq]) -> None:
        """One token for each generating sequence, in the order of ``active``."""
        for n, seq in enumerate(active):
            self._add(n, seq.tokens[-1], len(seq.prompt) + len(seq.tokens) - 1, seq.slot, True)
        self._batch.n_tokens = len(active)

    def _step(
        self,
        seq: _Seq,
        token: int,
        spec: SamplingSpec,
        on_text: OnText | None,
        results: list[DecodeResult | Exception | None],
        active: list[_Seq],
        free: list[int],
    ) -> None:
        finish = self._accept(seq, token, spec)
        if finish is not None:
            results[seq.index] = self._finish(seq, finish, on_text)
            active.remove(seq)
            free.append(seq.slot)
        elif on_text is not None:
            self._stream(seq, spec, on_text)

    def _accept(self, seq: _Seq, token: int, spec: SamplingSpec) -> str | None:
        if self._lib.llama_vocab_is_eog(self._vocab, token) or token in spec.stop_token_ids:
            return "stop"
        seq.tokens.append(token)
        seq.data += self._piece(token, spec.special)
        seq.text = seq.data.decode("utf-8", errors="ignore")
        if spec.stop_strings:
            cuts = [pos for pos in (seq.text.find(s) for s in spec.stop_strings) if pos >= 0]
            if cuts:
                seq.text = seq.text[: min(cuts)]
                return "stop"
        if len(seq.tokens) >= seq.max_new:
            return "length"
        return None

    def _piece(self, token: int, special: bool) -> bytes:
        buffer = ctypes.create_string_buffer(64)
        n = self._lib.llama_token_to_piece(self._vocab, token, buffer, 64, 0, special)
        if n < 0:
            buffer = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, token, buffer, -n, 0, special)
        return bytes(buffer.raw[:n])

    def _finish(self, seq: _Seq, finish: str, on_text: OnText | None) -> DecodeResult:
        self._lib.llama_sampler_free(seq.sampler)
        seq.sampler = None
        self._lib.llama_memory_seq_rm(self._mem, seq.slot, -1, -1)
        if on_text is not None and len(seq.text) > seq.emitted:
            on_text(seq.index, seq.text[seq.emitted :])
        return DecodeResult(seq.text, seq.tokens, len(seq.prompt), finish)

    def _stream(self, seq: _Seq, spec: SamplingSpec, on_text: OnText) -> None:
        """Emit the text that no stop string can still claim."""
        hold = 0
        for stop in spec.stop_strings:
            for k in range(min(len(stop) - 1, len(seq.text)), 0, -1):
                if seq.text.endswith(stop[:k]):
                    hold = max(hold, k)
                    break
        safe = len(seq.text) - hold
        if safe > seq.emitted:
            on_text(seq.index, seq.text[seq.emitted : safe])
            seq.emitted = safe
