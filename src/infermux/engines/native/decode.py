"""The NATIVE engine's decode loop: batched, KV-cached, with less wasted work than ``model.generate``.

Per step it computes what greedy/sampled ``generate`` computes (float32 logits of the last position,
the same logits processors, argmax or multinomial, left padding with matching position ids), and avoids
three kinds of waste that ``generate`` has on a batch:

- **Padding in the prefill.** Rows are prefilled in groups of similar length, and the groups' KV caches
  are then joined (left-padded) into one decode batch.
- **Shared prefixes.** Rows opening with the same ``PREFIX_MIN`` or more tokens share a prefill group,
  which evaluates the common prefix once and expands its KV cache to every row of the group.
- **Finished rows.** ``generate`` keeps computing every row until the last one ends; here a row leaves the
  batch (and the KV cache) as soon as it ends, and left-padding columns no remaining row needs are cut.
- **Cache copies.** The KV cache grows in place in a preallocated buffer instead of being concatenated
  (copied whole) at every step.

Image-text-to-text models whose text positions are plain (:func:`supports_image_decode`) take their
batch as the processor made it (``inputs``: left-padded ids, mask and pixel tensors): one prefill runs the
vision encoder and puts the images in the KV cache, and the steps after it feed token ids only, as
``generate`` does.

Models whose cache is not a plain full-attention cache (sliding windows, recurrent states) and beam
search or guided decoding go through ``model.generate`` instead (see ``engine.py``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from transformers import DynamicCache, LogitsProcessorList
from transformers.cache_utils import DynamicLayer

__all__ = ["decode", "supports_fast_decode", "supports_image_decode"]

# Trim shared left padding once at least this many columns are unused by every remaining row.
_TRIM_MIN = 8
# A prefill group holds rows whose lengths are within this factor (plus slack) of its shortest row ...
_GROUP_RATIO, _GROUP_SLACK = 1.25, 16
# ... and at most this many tokens including padding (bounds prefill memory).
_GROUP_TOKENS = 16384
# Rows sharing at least this many leading tokens evaluate them once (see ``_prefill``).
PREFIX_MIN = 64


def supports_fast_decode(model: Any) -> bool:
    """Whether ``decode`` can drive ``model``: a full-attention dynamic cache and ``logits_to_keep``."""
    try:
        cache = DynamicCache(config=model.config)
    except Exception:
        return False
    plain = bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)
    return plain and "logits_to_keep" in inspect.signature(model.forward).parameters


# Image-text-to-text architectures whose text model numbers positions 0, 1, 2... past the image tokens
# (no multimodal rotary positions, no cross-attention to the images): after the prefill, a step is text.
_PLAIN_IMAGE_MODELS = frozenset({"idefics2", "idefics3", "smolvlm"})


def supports_image_decode(model: Any) -> bool:
    """Whether ``decode`` can drive the image-text-to-text ``model`` (given the processor's ``inputs``)."""
    return getattr(model.config, "model_type", None) in _PLAIN_IMAGE_MODELS and supports_fast_decode(model)


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


def _common_prefix(prompts: list[list[int]]) -> int:
    """How many leading tokens all ``prompts`` share (0 for a single prompt: nothing to share)."""
    if len(prompts) < 2:
        return 0
    first, shortest = prompts[0], min(len(p) for p in prompts)
    for n in range(shortest):
        token = first[n]
        if any(p[n] != token for p in prompts):
            return n
    return shortest


def _prefill_groups(prompts: list[list[int]]) -> list[tuple[list[int], int]]:
    """Prefill groups as (rows, shared prefix length): rows are first split by their opening tokens, so
    rows with a long common prefix (a shared system prompt or few-shot block) land in one group wherever
    they are in the batch, then by length; a group computes a prefix of ``PREFIX_MIN`` or more once."""
    lengths = [len(p) for p in prompts]
    families: dict[tuple[int, ...], list[int]] = {}
    for row, prompt in enumerate(prompts):
        head = tuple(prompt[:PREFIX_MIN]) if len(prompt) > PREFIX_MIN else (-1 - row,)
        families.setdefault(head, []).append(row)
    shared = [rows for rows in families.values() if len(rows) > 1]
    alone = sorted((rows[0] for rows in families.values() if len(rows) == 1), key=lambda r: lengths[r])
    groups: list[tuple[list[int], int]] = []
    for rows in [*shared, alone]:
        rows = sorted(rows, key=lambda r: lengths[r])
        for part in _groups([lengths[r] for r in rows]):
            members = [rows[i] for i in part]
            prefix = min(_common_prefix([prompts[r] for r in members]), min(lengths[r] for r in members) - 1)
            groups.append((members, prefix if prefix >= PREFIX_MIN else 0))
    return groups


def _prefill(model: Any, prompts: list[list[int]], pad_id: int, capacity: int, device: Any) -> tuple[Any, ...]:
    """Prefill ``prompts`` group by group; return (logits, joined cache, mask, last positions, ids, rows).

    A group whose rows share a prefix evaluates it once (batch of one) and expands its KV cache to the
    group, then evaluates each row's own tokens after it. A group's cache is laid out as [shared prefix |
    padding | row tokens]; groups are left-padded to one width and joined; ``rows`` is the original row
    of each batch position (groups reorder rows).
    """
    lengths = [len(p) for p in prompts]
    history, _ = _left_pad(prompts, max(lengths), pad_id, device)  # what logits processors see
    logits: list[torch.Tensor] = []
    keys: list[list[torch.Tensor]] = []
    values: list[list[torch.Tensor]] = []
    masks: list[torch.Tensor] = []
    order: list[int] = []
    groups = _prefill_groups(prompts)
    width = max(shared + max(lengths[r] - shared for r in rows) for rows, shared in groups)
    for rows, shared in groups:
        tails = [prompts[r][shared:] for r in rows]
        tail_width = max(len(t) for t in tails)
        ids, mask = _left_pad(tails, tail_width, pad_id, device)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0) + shared
        cache = DynamicCache(config=model.config)
        if shared:
            model(input_ids=torch.tensor([prompts[rows[0]][:shared]], device=device), past_key_values=cache,
                  use_cache=True, logits_to_keep=1)  # fmt: skip
            cache.layers = [_GrowingLayer(layer.keys.expand(len(rows), -1, -1, -1),  # type: ignore[union-attr]
                                          layer.values.expand(len(rows), -1, -1, -1),  # type: ignore[union-attr]
                                          shared + tail_width)
                            for layer in cache.layers]  # fmt: skip
            mask = torch.cat([mask.new_ones((len(rows), shared)), mask], dim=-1)
        out = model(
            input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True,
            logits_to_keep=1,
        )  # fmt: skip
        logits.append(out.logits[:, -1].to(dtype=torch.float32))
        pad = width - shared - tail_width
        masks.append(torch.nn.functional.pad(mask, (pad, 0)))
        layer: Any
        for i, layer in enumerate(cache.layers):
            if i == len(keys):
                keys.append([])
                values.append([])
            keys[i].append(torch.nn.functional.pad(layer.keys, (0, 0, pad, 0)))
            values[i].append(torch.nn.functional.pad(layer.values, (0, 0, pad, 0)))
        order.extend(rows)
        del out, cache
    joined = DynamicCache(config=model.config)
    joined.layers = [_GrowingLayer(torch.cat(k), torch.cat(v), capacity) for k, v in zip(keys, values, strict=True)]
    last = torch.tensor([[lengths[r] - 1] for r in order], device=device)
    return torch.cat(logits), joined, torch.cat(masks), last, history[torch.tensor(order, device=device)], order


def _prefill_inputs(model: Any, inputs: dict[str, Any], capacity: int) -> tuple[Any, ...]:
    """Prefill one processor-made batch (left-padded ids and mask, pixel tensors) in one call, the images
    included; the same tuple as :func:`_prefill`, rows in their order."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    cache = DynamicCache(config=model.config)
    out = model(**inputs, position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=1)
    layers: list[Any] = cache.layers
    cache.layers = [_GrowingLayer(layer.keys, layer.values, capacity) for layer in layers]
    return out.logits[:, -1].to(dtype=torch.float32), cache, mask, positions[:, -1:], ids, list(range(len(ids)))


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
    on_finish: Callable[[int, list[int]], None] | None = None,
    inputs: dict[str, Any] | None = None,
) -> list[list[int]]:
    """Generate up to ``max_new_tokens`` for each prompt; return the new token ids per row.

    A row ends after a token of ``stop_ids`` (kept in its output, like ``generate``), when
    ``should_stop(row, tokens)`` says so (stop strings), or at ``max_new_tokens``. Processors see the
    prompts left-padded to the longest one, then the generated tokens (as with ``generate``).
    ``on_step(rows, scores, tokens)``, when given, sees each step's processed scores of the rows still
    decoding and the tokens chosen (log-probabilities, :mod:`.logprobs`). ``on_finish(row, tokens)`` is
    called the step a row ends (its answer can be handed on while the others decode). ``inputs``: an
    image-text-to-text model's batch as its processor made it (:func:`supports_image_decode`), prefilled
    as it is instead of ``prompts`` (which then only name the rows).
    """
    device = next(model.parameters()).device
    if inputs is not None:
        capacity = inputs["input_ids"].shape[1] + max_new_tokens
        logits, cache, mask, last_position, history, alive = _prefill_inputs(model, inputs, capacity)
    else:
        capacity = max(len(p) for p in prompts) + max_new_tokens
        logits, cache, mask, last_position, history, alive = _prefill(model, prompts, pad_id, capacity, device)
    results: list[list[int]] = [[] for _ in prompts]  # alive: the original row of each batch position
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
        if on_finish is not None:
            for position, row in enumerate(alive):
                if finished[position]:
                    on_finish(row, results[row])
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
