"""The NATIVE engine's ``model.generate`` path: beam search, guided decoding, and models the engine's own
decode loop cannot drive (image-text-to-text models among them)."""

from __future__ import annotations

from typing import Any

from infermux.configs.generation_params import GenerationParams
from infermux.engines.native.logprobs import ScoreRecorder

__all__ = ["hf_generate"]


def hf_generate(
    model: Any,
    tokenizer: Any,
    ids: Any,
    mask: Any,
    generation: GenerationParams,
    processors: Any,
    stop_ids: list[int],
    vocab: int,
    recorder: ScoreRecorder | None = None,
    extra: dict[str, Any] | None = None,
) -> list[list[int]]:
    """New tokens per row (cut after the first stop id) from ``model.generate``; ``extra``: a vision model's
    pixel tensors; ``recorder`` sees each step's processed scores."""
    from infermux.engines.native import params

    if generation.guided_decoding is not None:
        processors.insert(0, params.guided_processor(generation.guided_decoding, tokenizer, vocab))
    sampling = generation.sampling
    output = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=generation.max_new_tokens,
            do_sample=sampling,
            num_beams=generation.num_beams,
            logits_processor=processors,
            eos_token_id=stop_ids,
            pad_token_id=tokenizer.pad_token_id,
            stop_strings=generation.stop_strings or None,
            tokenizer=tokenizer if generation.stop_strings else None,
            use_cache=True,
            # Sampling settings are in `processors`; neutralise the model's own defaults.
            temperature=None, top_p=None, top_k=None, min_p=None,
            output_scores=recorder is not None, return_dict_in_generate=recorder is not None,
            **(extra or {}),  # a vision model's pixel tensors
        )  # fmt: skip
    if recorder is not None:
        # Per step, the processed scores of every sequence (beam search: of the beams, not the answers).
        new = output.sequences[:, ids.shape[1] :]
        if generation.num_beams == 1:
            for step, scores in enumerate(output.scores):
                recorder(list(range(new.shape[0])), scores, new[:, step])
        output = output.sequences
    rows = []
    for row in output[:, ids.shape[1] :].tolist():
        cut = next((i + 1 for i, token in enumerate(row) if token in stop_ids), len(row))
        rows.append(row[:cut])
    return rows
