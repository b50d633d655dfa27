"""The NATIVE engine's decode loop: batched, KV-cached, and shrinking as rows finish.

``model.generate`` keeps every row of a batch in every step until the last row is done, padding the
finished ones; with answers of different lengths most of the late steps compute rows nobody needs. This
loop does the same computation as greedy/sampled ``generate`` (same prefill, same position ids, same
float32 logits, same processors, argmax or multinomial), but after each step drops the finished rows
from the batch and the KV cache, and trims left-padding columns no remaining row needs.

Beam search and guided decoding go through ``model.generate`` instead (see ``native.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import DynamicCache, LogitsProcessorList

__all__ = ["decode"]

# Trim the shared left padding once at least this many columns are unused by every remaining row.
_TRIM_MIN = 8


def decode(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    processors: LogitsProcessorList,
    sample: bool,
    stop_ids: list[int],
    should_stop: Callable[[int, list[int]], bool] | None = None,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Generate up to ``max_new_tokens`` for each left-padded row; return the new token ids per row.

    A row ends after a token of ``stop_ids`` (kept in its output, like ``generate``), when
    ``should_stop(row, tokens)`` says so (stop strings), or at ``max_new_tokens``.
    """
    batch = input_ids.shape[0]
    device = input_ids.device
    results: list[list[int]] = [[] for _ in range(batch)]
    alive = torch.arange(batch, device=device)  # original row index of each batch position
    stop_tensor = torch.tensor(stop_ids or [-1], device=device)
    positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    history = input_ids  # rows of prompt + generated ids, for processors that look back
    cache = DynamicCache(config=model.config)
    step_ids, step_mask, step_positions = input_ids, attention_mask, positions
    extra = {"logits_to_keep": 1} if _supports_logits_to_keep(model) else {}

    for step in range(max_new_tokens):
        outputs = model(
            input_ids=step_ids,
            attention_mask=step_mask,
            position_ids=step_positions,
            past_key_values=cache,
            use_cache=True,
            **(extra if step == 0 else {}),
        )
        logits = outputs.logits[:, -1].to(dtype=torch.float32)
        del outputs
        scores = processors(history, logits) if len(processors) else logits
        if sample:
            probs = torch.softmax(scores, dim=-1)
            tokens = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
        else:
            tokens = torch.argmax(scores, dim=-1)

        token_list = tokens.tolist()
        ended = torch.isin(tokens, stop_tensor)
        if step + 1 == max_new_tokens:
            ended[:] = True
        finished = ended.tolist()
        for position, row in enumerate(alive.tolist()):
            results[row].append(token_list[position])
            if not finished[position] and should_stop is not None and should_stop(row, results[row]):
                finished[position] = True
        if all(finished):
            break

        history = torch.cat([history, tokens[:, None]], dim=-1)
        step_mask = torch.cat([step_mask, step_mask.new_ones((step_mask.shape[0], 1))], dim=-1)
        step_positions = step_positions[:, -1:] + 1
        step_ids = tokens[:, None]
        if any(finished):
            keep = torch.tensor([i for i, done in enumerate(finished) if not done], device=device)
            cache.batch_select_indices(keep)
            alive, history, step_mask = alive[keep], history[keep], step_mask[keep]
            step_positions, step_ids = step_positions[keep], step_ids[keep]
            step_mask = _trim_left_padding(cache, step_mask)
    return results


def _trim_left_padding(cache: DynamicCache, mask: torch.Tensor) -> torch.Tensor:
    """Drop leading columns that are padding for every remaining row, from the mask and the cache."""
    used = mask.any(dim=0)
    first = int(torch.argmax(used.to(torch.int8)).item()) if bool(used.any()) else 0
    layers = getattr(cache, "layers", None)
    if first < _TRIM_MIN or not layers or not all(type(layer).__name__ == "DynamicLayer" for layer in layers):
        return mask
    # The cache holds every column but the current step's token, which the mask already counts.
    for layer in layers:
        layer.keys = layer.keys[:, :, first:, :]
        layer.values = layer.values[:, :, first:, :]
    return mask[:, first:]


def _supports_logits_to_keep(model: Any) -> bool:
    import inspect

    return "logits_to_keep" in inspect.signature(model.forward).parameters
