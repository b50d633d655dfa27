"""LLAMACPP: n answers per prompt and token log-probabilities, on top of the multi-sequence decoder.

The n answers of a prompt are n passes over the chunk's prompts through the decoder's scheduler: pass
k reuses the prompt's KV cache left by the earlier ones (the decoder's prefix reuse), and is seeded
``seed + k``, so the first sample is the answer ``n: 1`` gives and every sample is reproducible.
A token's log-probability is ``log_softmax`` of the model's logits at the position it was sampled
from, as llama-cpp-python reports them (before the samplers: bias, penalties, temperature). Each token
keeps its raw piece as ``bytes`` (a piece may be part of a multi-byte character).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from infermux.engines.llamacpp.decode import DecodeResult, SamplingSpec
from infermux.engines.llamacpp.media import MediaPrompt
from infermux.engines.llamacpp.scheduler import DecodeScheduler
from infermux.samples import reply_with_samples, token_logprob
from infermux.types import Conversation, Sample, TokenLogprob, Usage

__all__ = ["Answer", "LogitsRecorder", "StreamedLogprobs", "generate_samples"]

#: One sample of a prompt: the decoded answer and its token log-probabilities (None unless asked).
Answer = tuple[DecodeResult, list[TokenLogprob] | None]


class LogitsRecorder:
    """Per request, the sampled tokens' log-probabilities and the ``top`` best alternatives."""

    def __init__(self, llama: Any, requests: int, top: int) -> None:
        self._llama = llama
        self._n_vocab = int(llama.n_vocab())
        self.top = top
        self._steps: list[list[tuple[int, float, list[tuple[int, float]]]]] = [[] for _ in range(requests)]
        self._pieces: dict[int, bytes] = {}

    def __call__(self, index: int, token: int, logits: Any) -> None:
        import numpy as np

        row = np.ctypeslib.as_array(logits, shape=(self._n_vocab,)).astype(np.float64)
        peak = row.max()
        logprobs = row - (peak + np.log(np.exp(row - peak).sum()))
        alternatives: list[tuple[int, float]] = []
        if self.top:
            best = np.argpartition(-logprobs, self.top)[: self.top]
            best = best[np.argsort(-logprobs[best])]
            alternatives = [(int(t), float(logprobs[t])) for t in best]
        self._steps[index].append((int(token), float(logprobs[token]), alternatives))

    def _piece(self, token: int) -> bytes:
        # The token's own bytes (llama_token_to_piece): possibly part of a multi-byte character.
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = bytes(self._llama.detokenize([token], special=True))
        return piece

    def logprobs(self, index: int, length: int, start: int = 0) -> list[TokenLogprob]:
        """Tokens ``start`` to ``length`` of request ``index`` (an end-of-generation token is not kept)."""
        return [
            token_logprob(self._piece(token), value, [(self._piece(t), lp) for t, lp in alternatives])
            for token, value, alternatives in self._steps[index][start:length]
        ]


class StreamedLogprobs:
    """One streamed request's token log-probabilities, handed out with the text they produced."""

    def __init__(self, llama: Any, top: int) -> None:
        self._recorder = LogitsRecorder(llama, 1, top)
        self._sent = 0

    def on_logits(self, token: int, logits: Any) -> None:
        self._recorder(0, token, logits)

    def take(self, upto: int) -> list[TokenLogprob]:
        """The answer's tokens up to ``upto`` not handed out yet."""
        out = self._recorder.logprobs(0, upto, self._sent)
        self._sent = max(self._sent, upto)
        return out

    def answer(self, conversation: Conversation, reply: Conversation, result: DecodeResult) -> Conversation:
        """The stream's ``reply`` with its one sample, all its tokens' log-probabilities, in ``metadata["samples"]``."""
        message, n = reply.last_message, len(result.tokens)
        calls = [c.to_json_dict() for c in message.tool_calls or []] or None
        reason = reply.finish_reason
        sample = Sample(text=message.text or "", finish_reason=reason, usage=Usage.of(completion=n), tool_calls=calls,
                        logprobs=self._recorder.logprobs(0, n))  # fmt: skip
        return reply_with_samples(conversation, [sample], usage=Usage.of(result.prompt_tokens, n),
                                  tool_calls=message.tool_calls)  # fmt: skip


def generate_samples(
    decoder: DecodeScheduler,
    llama: Any,
    prompts: Sequence[list[int] | MediaPrompt],
    max_new_tokens: int,
    spec: SamplingSpec,
    *,
    n: int,
    logprobs: bool,
    top_logprobs: int,
) -> list[list[Answer] | Exception]:
    """Per prompt its n answers, or the first problem one of them had (the row fails whole)."""
    out: list[list[Answer] | Exception] = [[] for _ in prompts]
    for k in range(n):
        seeded = spec if spec.seed is None or k == 0 else dataclasses.replace(spec, seed=spec.seed + k)
        recorder = LogitsRecorder(llama, len(prompts), top_logprobs) if logprobs else None
        results = decoder.generate(prompts, max_new_tokens, seeded, on_logits=recorder)
        for i, result in enumerate(results):
            answers = out[i]
            if isinstance(answers, Exception):
                continue
            if isinstance(result, Exception):
                out[i] = result
            else:
                answers.append((result, recorder.logprobs(i, len(result.tokens)) if recorder is not None else None))
    return out
