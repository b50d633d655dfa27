"""The NATIVE engine's decode loop: batched, KV-cached, with less wasted work than ``model.generate``.

Per step it computes what greedy/sampled ``generate`` computes (float32 logits of the last position,
the same logits processors, argmax or multinomial, left padding with matching position ids), and avoids
three kinds of waste that ``generate`` has on a batch:

- **Padding in the prefill.** Rows arrive sorted by length; they are prefilled in groups of similar
  length, and the groups' KV caches are then joined (left-padded) into one decode batch.
- **Finished rows.** ``generate`` keeps computing every row until the last one ends; here a row leaves the
  batch (and the KV cache) as soon as it ends, and left-padding columns no remaining row needs are cut.
- **Cache copies.** The KV cache grows in place in a preallocated buffer instead of being concatenated
  (copied whole) at every step.

Models whose cache is not a plain full-attention cache (sliding windows, recurrent states) and beam
search or guided decoding go through ``model.generate`` instead (see ``native.py``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from transformers import DynamicCache, LogitsProcessorList
from transformers.cache_utils import DynamicLayer

__all__ = ["decode", "supports_fast_decode"]

# Trim shared left padding once at least this many columns are unused by every remaining row.
_TRIM_MIN = 8
# A prefill group holds rows whose lengths are within this factor (plus slack) of its shortest row ...
_GROUP_RATIO, _GROUP_SLACK = 1.25, 16
# ... and at most this many tokens including padding (bounds prefill memory).
_GROUP_TOKENS = 16384


def supports_fast_decode(model: Any) -> bool:
    """Whether ``decode`` can drive ``model``: a full-attention dynamic cache and ``logits_to_keep``."""
    try:
        cache = DynamicCache(config=model.config)
    except Exception:
        return False
    plain = bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)
    return plain and "logits_to_keep" in inspect.signature(model.forward).parameters


class _GrowingLayer(DynamicLayer):
    """A full-attention cache layer that appends in place into a buffer with spare room."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
        super().__init__()
        batch, heads, length, dim = keys.shape
        self._keys = keys.new_empty((batch, heads, max(capacity, length), dim))
        self._values = values.new_empty((batch, values.shape[1], max(capacity, length), values.shape[-1]))
        self._keys[:, :, :length] = keys
        self._values[:, :, :length] = values
        self._start, self._end = 0, length
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self._expose()

    def _expose(self) -> None:
        self.keys = self._keys[:, :, self._start : self._end]
        self.values = self._values[:, :, self._start : self._end]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        end = self._end + key_states.shape[-2]
        if end > self._keys.shape[2]:  # out of room: grow (rare; capacity covers max_new_tokens)
            grow = end - self._keys.shape[2] + 64
            self._keys = torch.cat(
                [self._keys, self._keys.new_empty((*self._keys.shape[:2], grow, self._keys.shape[3]))], 2
            )
            self._values = torch.cat(
                [self._values, self._values.new_empty((*self._values.shape[:2], grow, self._values.shape[3]))], 2
            )
        self._keys[:, :, self._end : end] = key_states
        self._values[:, :, self._end : end] = value_states
        self._end = end
        self._expose()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._keys = self._keys[indices]
        self._values = self._values[indices]
        self._expose()

    def drop_left(self, columns: int) -> None:
        self._start += columns
        self._expose()


def _groups(lengths: list[int]) -> list[list[int]]:
    """Consecutive rows (sorted by length) that can be prefilled together with little padding."""
    groups: list[list[int]] = []
    for row, length in enumerate(lengths):
        if groups:
            group = groups[-1]
            shortest, longest = lengths[group[0]], max(lengths[group[-1]], length)
            if length <= shortest * _GROUP_RATIO + _GROUP_SLACK and longest * (len(group) + 1) <= _GROUP_TOKENS:
                group.append(row)
                continue
        groups.append([row])
    return groups


def _left_pad(prompts: list[list[int]], width: int, pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
    return ids.to(device), mask.to(device)


def _prefill(model: Any, prompts: list[list[int]], pad_id: int, capacity: int, device: Any) -> tuple[Any, ...]:
    """Prefill ``prompts`` group by group; return (logits, joined cache, mask, last positions, ids)."""
    lengths = [len(p) for p in prompts]
    width = max(lengths)
    ids, mask = _left_pad(prompts, width, pad_id, device)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    logits: list[torch.Tensor] = []
    keys: list[list[torch.Tensor]] = []
    values: list[list[torch.Tensor]] = []
    for group in _groups(lengths) if lengths == sorted(lengths) else [list(range(len(prompts)))]:
        group_width = max(lengths[i] for i in group)
        rows = torch.tensor(group, device=device)
        cache = DynamicCache(config=model.config)
        out = model(
            input_ids=ids[rows, width - group_width :],
            attention_mask=mask[rows, width - group_width :],
            position_ids=positions[rows, width - group_width :],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits.append(out.logits[:, -1].to(dtype=torch.float32))
        pad = width - group_width
        layer: Any
        for i, layer in enumerate(cache.layers):
            if i == len(keys):
                keys.append([])
                values.append([])
            keys[i].append(torch.nn.functional.pad(layer.keys, (0, 0, pad, 0)))
            values[i].append(torch.nn.functional.pad(layer.values, (0, 0, pad, 0)))
        del out, cache
    joined = DynamicCache(config=model.config)
    joined.layers = [_GrowingLayer(torch.cat(k), torch.cat(v), capacity) for k, v in zip(keys, values, strict=True)]
    return torch.cat(logits), joined, mask, positions[:, -1:], ids


def decode(
    model: Any,
    prompts: list[list[int]],
    *,
    pad_id: int,
    max_new_tokens: int,
    processors: LogitsProcessorList,
    sample: bool,
    stop_ids: list[int],
    should_stop: Callable[[int, list[int]], bool] | None = None,
    generator: torch.Generator | None = None,
    on_step: Callable[[list[int], torch.Tensor, torch.Tensor], None] | None = None,
) -> list[list[int]]:
    """Generate up to ``max_new_tokens`` for each prompt; return the new token ids per row.

    A row ends after a token of ``stop_ids`` (kept in its output, like ``generate``), when
    ``should_stop(row, tokens)`` says so (stop strings), or at ``max_new_tokens``. Processors see the
    prompts left-padded to the longest one, then the generated tokens (as with ``generate``).
    ``on_step(rows, scores, tokens)``, when given, sees each step's processed scores of the rows still
    decoding and the tokens chosen (log-probabilities, :mod:`.scores`).
    """
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    logits, cache, mask, last_position, history = _prefill(model, prompts, pad_id, width + max_new_tokens, device)
    results: list[list[int]] = [[] for _ in prompts]
    alive = list(range(len(prompts)))  # original row of each batch position
    stop_tensor = torch.tensor(stop_ids or [-1], device=device)

    for step in range(max_new_tokens):
        scores = processors(history, logits) if len(processors) else logits
        if sample:
            tokens = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1, generator=generator).squeeze(1)
        else:
            tokens = torch.argmax(scores, dim=-1)
        if on_step is not None:
            on_step(alive, scores, tokens)
        token_list = tokens.tolist()
        finished = torch.isin(tokens, stop_tensor).tolist()
        for position, row in enumerate(alive):
            results[row].append(token_list[position])
            if step + 1 == max_new_tokens or (
                not finished[position] and should_stop is not None and should_stop(row, results[row])
            ):
                finished[position] = True
        if all(finished):
            break
        history = torch.cat([history, tokens[:, None]], dim=-1)
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
        last_position = last_position + 1
        if any(finished):
            keep = [i for i, done in enumerate(finished) if not done]
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            alive = [alive[i] for i in keep]
            history, mask, last_position, tokens = history[index], mask[index], last_position[index], tokens[index]
            mask = _trim_left_padding(cache, mask)
        out = model(
            input_ids=tokens[:, None],
            attention_mask=mask,
            position_ids=last_position,
            past_key_values=cache,
            use_cache=True,
        )
        logits = out.logits[:, -1].to(dtype=torch.float32)
        del out
    return results


def _trim_left_padding(cache: DynamicCache, mask: torch.Tensor) -> torch.Tensor:
    """Drop leading columns that are padding for every remaining row, from the mask and the cache."""
    used = mask.any(dim=0)
    first = int(torch.argmax(used.to(torch.int8)).item())
    if first < _TRIM_MIN:
        return mask
    layer: Any
    for layer in cache.layers:
        layer.drop_left(first)
    return mask[:, first:]
