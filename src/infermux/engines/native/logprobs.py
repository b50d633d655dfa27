"""Token log-probabilities of NATIVE answers, recorded from the decode loop's scores.

A token's log-probability is ``log_softmax`` of the scores it was chosen from, after the logits
processors (temperature, top-p, penalties, ...), as vLLM and OpenAI report them; with greedy decoding
and no processors that is the model's own distribution. Token texts are decoded once, at the end,
with each token's raw bytes (see :mod:`infermux.engines.local.token_bytes`).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from infermux.engines.local.token_bytes import TokenBytes
from infermux.samples import token_logprob
from infermux.types import TokenLogprob

__all__ = ["ScoreRecorder"]


class ScoreRecorder:
    """Collects, per sequence, the chosen token's log-probability and the ``top`` best alternatives."""

    def __init__(self, sequences: int, top: int) -> None:
        self.top = top
        self._chosen: list[list[tuple[int, float]]] = [[] for _ in range(sequences)]
        self._alternatives: list[list[list[tuple[int, float]]]] = [[] for _ in range(sequences)]
        self._raw: TokenBytes | None = None
        self._pieces: dict[int, tuple[str, bytes]] = {}  # token id -> (text, bytes), kept across calls

    def __call__(self, rows: list[int], scores: Any, tokens: Any) -> None:
        """One decoding step: ``scores`` (batch, vocab) for the sequences ``rows``, ``tokens`` chosen."""
        import torch

        logprobs = torch.log_softmax(scores.to(torch.float32), dim=-1)
        chosen = logprobs.gather(1, tokens[:, None]).squeeze(1).tolist()
        token_list = tokens.tolist()
        if self.top:
            values, indices = torch.topk(logprobs, self.top, dim=-1)
            tops = [list(zip(i, v, strict=True)) for i, v in zip(indices.tolist(), values.tolist(), strict=True)]
        for position, row in enumerate(rows):
            self._chosen[row].append((token_list[position], chosen[position]))
            self._alternatives[row].append(tops[position] if self.top else [])

    def logprobs(
        self, row: int, length: int, tokenizer: Any, end_ids: Collection[int] = (), start: int = 0
    ) -> list[TokenLogprob]:
        """Recorded tokens ``start`` to ``length`` of sequence ``row``, with their texts. A last token in
        ``end_ids`` (the end of the answer, not part of its text) is left out, as OpenAI and the other
        engines do, so the tokens' bytes join to the answer."""
        if length and self._chosen[row][length - 1][0] in end_ids:
            length -= 1
        chosen = self._chosen[row][start:length]
        alternatives = self._alternatives[row][start:length]
        if self._raw is None:
            self._raw = TokenBytes(tokenizer)
        raw, piece = self._raw, self._pieces
        for t in {t for t, _ in chosen} | {t for step in alternatives for t, _ in step}:
            if t not in piece:
                piece[t] = (tokenizer.decode([t]), raw(t))
        return [
            token_logprob(piece[token], value, [(piece[t], lp) for t, lp in step])
            for (token, value), step in zip(chosen, alternatives, strict=True)
        ]
