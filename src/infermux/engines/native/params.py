"""GenerationParams → transformers logits processors and stop conditions, for the NATIVE engine.

The engine's own decode loop and ``model.generate`` (used for beam search and guided decoding) share
these pieces, so both honour the same parameters the same way:

- sampling whenever ``temperature > 0`` (or ``use_sampling``), with ``top_p`` and ``min_p``;
- ``frequency_penalty`` / ``presence_penalty`` with their OpenAI meaning (subtracted from logits);
- ``logit_bias`` (token id or token string → bias);
- stop token ids (the model's end-of-turn tokens plus ``stop_token_ids``) and ``stop_strings`` (the
  answer is cut before the stop string, as OpenAI-style servers do);
- guided decoding (json / regex / choice) through xgrammar's grammar matchers.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from infermux.configs.generation_params import GenerationParams, GuidedDecodingParams
from infermux.engines.native.model import cut_at_stop  # torch-free; re-exported here
from infermux.errors import ConfigError, EngineUnavailableError, install_hint

__all__ = ["PenaltyProcessor", "build_processors", "cut_at_stop", "stop_string_check", "stop_token_ids", "token_bias"]


class PenaltyProcessor(LogitsProcessor):
    """OpenAI-style penalties over the tokens generated so far (not the prompt):
    ``logit -= frequency * count + presence * (count > 0)``."""

    def __init__(self, frequency: float, presence: float, prompt_length: int) -> None:
        self.frequency = frequency
        self.presence = presence
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> Any:
        generated = input_ids[:, self.prompt_length :]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores)
        counts.scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


class BiasProcessor(LogitsProcessor):
    """Adds a fixed bias to chosen token ids at every step."""

    def __init__(self, bias: dict[int, float], vocab_size: int) -> None:
        self.ids = torch.tensor(list(bias), dtype=torch.long)
        self.values = torch.tensor(list(bias.values()), dtype=torch.float32)
        self.vocab_size = vocab_size

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> Any:
        biased = scores.clone()
        biased[:, self.ids.to(scores.device)] += self.values.to(scores.device, scores.dtype)
        return biased


def token_bias(generation: GenerationParams, tokenizer: Any, vocab_size: int) -> dict[int, float]:
    """``logit_bias`` with every key turned into a token id (keys may be ids or single tokens)."""
    out: dict[int, float] = {}
    for key, value in generation.logit_bias.items():
        if key.lstrip("-").isdigit():
            token_id = int(key)
        else:
            token_id = tokenizer.convert_tokens_to_ids(key)
            if token_id is None or token_id == tokenizer.unk_token_id:
                raise ConfigError(f"generation.logit_bias: {key!r} is not a token of this tokenizer; use token ids.")
        if not 0 <= token_id < vocab_size:
            raise ConfigError(
                f"generation.logit_bias: token id {token_id} is outside the vocabulary (0..{vocab_size - 1})."
            )
        out[token_id] = float(value)
    return out


def stop_token_ids(generation: GenerationParams, tokenizer: Any, model: Any) -> list[int]:
    """The ids that end an answer: the model's end-of-sequence ids, the tokenizer's, and ``stop_token_ids``."""
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured, tokenizer.eos_token_id, generation.stop_token_ids):
        if value is None:
            continue
        for token_id in value if isinstance(value, (list, tuple)) else [value]:
            if int(token_id) not in ids:
                ids.append(int(token_id))
    return ids


def build_processors(
    generation: GenerationParams, tokenizer: Any, vocab_size: int, prompt_length: int
) -> LogitsProcessorList:
    """The processors and warpers, in transformers' order: penalties and bias, then (when sampling)
    temperature, top-p and min-p."""
    processors = LogitsProcessorList()
    if generation.frequency_penalty or generation.presence_penalty:
        processors.append(PenaltyProcessor(generation.frequency_penalty, generation.presence_penalty, prompt_length))
    bias = token_bias(generation, tokenizer, vocab_size)
    if bias:
        processors.append(BiasProcessor(bias, vocab_size))
    if generation.sampling:
        temperature = generation.temperature if generation.temperature > 0 else 1.0
        if temperature != 1.0:
            processors.append(TemperatureLogitsWarper(temperature))
        if generation.top_p < 1.0:
            processors.append(TopPLogitsWarper(generation.top_p))
        if generation.min_p > 0.0:
            processors.append(MinPLogitsWarper(generation.min_p))
    return processors


def guided_processor(guided: GuidedDecodingParams, tokenizer: Any, vocab_size: int) -> LogitsProcessor:
    """A transformers logits processor enforcing ``guided`` with xgrammar (one per ``generate`` call)."""
    from infermux.engines.guided_bounds import check_guided

    check_guided(guided, "NATIVE")
    try:
        import xgrammar as xgr
        from xgrammar.contrib.hf import LogitsProcessor as GrammarProcessor
    except ImportError as exc:
        raise EngineUnavailableError(
            f"Guided decoding on the NATIVE engine needs xgrammar: {install_hint(package='xgrammar')}"
        ) from exc
    compiler = _compiler(xgr, tokenizer, vocab_size)
    if guided.kind == "json":
        compiled = compiler.compile_json_schema(json.dumps(guided.schema_dict()))
    elif guided.kind == "regex":
        compiled = compiler.compile_regex(guided.regex)
    else:
        choices = " | ".join(json.dumps(c) for c in guided.choice or [])
        compiled = compiler.compile_grammar(f"root ::= {choices}")
    return GrammarProcessor(compiled)


_COMPILERS: dict[int, Any] = {}


def _compiler(xgr: Any, tokenizer: Any, vocab_size: int) -> Any:
    key = id(tokenizer)
    if key not in _COMPILERS:
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        _COMPILERS[key] = xgr.GrammarCompiler(info)
    return _COMPILERS[key]


def stop_string_check(tokenizer: Any, generation: GenerationParams) -> Any:
    """``should_stop(row, tokens)``: whether the tail of ``tokens`` holds a stop string; None without any."""
    stops = generation.stop_strings
    if not stops:
        return None
    longest = max(len(s) for s in stops)

    def should_stop(row: int, tokens: list[int]) -> bool:
        # Only the tail can hold a new stop string: a few tokens cover the longest one.
        tail = tokenizer.decode(tokens[-(longest + 2) :], skip_special_tokens=False)
        return any(s in tail for s in stops)

    return should_stop
