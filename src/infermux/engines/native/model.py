"""The loaded NATIVE model as the batch and stream paths both see it: tensors in, answer out.

Both :mod:`engine` (batches) and :mod:`stream` (one streamed answer) build prompts' tensors and finish an
answer the same way through this small interface, so neither reaches into the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infermux.configs.generation_params import GenerationParams
from infermux.types import FinishReason, Usage

__all__ = ["LoadedModel", "cut_at_stop"]


def cut_at_stop(text: str, stop_strings: list[str] | None) -> tuple[str, bool]:
    """``text`` up to the earliest stop string (excluded), and whether one was found."""
    if not stop_strings:
        return text, False
    cuts = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
    if not cuts:
        return text, False
    return text[: min(cuts)], True


@dataclass(frozen=True)
class LoadedModel:
    """A transformers model, its tokenizer and device, with torch imported."""

    torch: Any
    model: Any
    tokenizer: Any
    device: Any

    def batch_tensors(self, prompts: list[list[int]]) -> tuple[Any, Any]:
        """Left-padded ``input_ids`` and ``attention_mask`` for ``prompts``, on the model's device."""
        torch = self.torch
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def finish(
        self, prompt: list[int], tokens: list[int], generation: GenerationParams, stop_ids: list[int]
    ) -> tuple[str, Usage, FinishReason]:
        """The answer text of ``tokens`` (cut at a stop string), its usage and why it ended."""
        skip = generation.skip_special_tokens
        text, stopped = cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=skip), generation.stop_strings)
        ended = bool(tokens) and tokens[-1] in stop_ids
        if not generation.exclude_prompt_from_response:
            text = self.tokenizer.decode(prompt, skip_special_tokens=skip) + text
        reason = FinishReason.STOP if stopped or ended else FinishReason.LENGTH
        return text, Usage.of(len(prompt), len(tokens)), reason
