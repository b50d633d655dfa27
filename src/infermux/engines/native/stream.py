"""Streaming one NATIVE answer: ``model.generate`` with a transformers text streamer.

The streamer decodes word by word; stop strings end the answer before they are shown, so the text that
could still turn out to be the start of a stop string is held back until it cannot.

A :class:`PromptCache` keeps the KV cache of the last streamed answer: the next turn of the same chat
starts from it (cropped where the new prompt first differs), so only the new turn's tokens are evaluated.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

from infermux.configs.generation_params import GenerationParams
from infermux.engines.native.model import LoadedModel
from infermux.engines.native.params import build_processors, cut_at_stop, stop_token_ids
from infermux.types import FinishReason, Usage

__all__ = ["PromptCache", "stream_tokens"]


class PromptCache:
    """The KV cache (and its tokens) of the last streamed answer, kept for the chat's next turn."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.cache: Any = None
        #: Prompt tokens the model evaluated for the last streamed answer (the rest came from the cache).
        self.last_evaluated = 0

    def take(self, prompt: list[int]) -> tuple[Any, int]:
        """The kept cache cropped to its longest prefix of ``prompt`` (at least one token left to
        evaluate), and that prefix's length; ``(None, 0)`` when nothing can be reused."""
        cache, tokens = self.cache, self.tokens
        self.cache, self.tokens = None, []  # taken: a failure below must not leave a half-updated cache
        shared = 0
        for a, b in zip(tokens, prompt[: len(prompt) - 1], strict=False):
            if a != b:
                break
            shared += 1
        if cache is None or shared == 0:
            return None, 0
        cache.crop(shared)
        return cache, shared

    def keep(self, tokens: list[int], cache: Any) -> None:
        """Keep ``cache``, which holds the first ``cache.get_seq_length()`` of ``tokens``."""
        self.tokens, self.cache = tokens[: cache.get_seq_length()], cache


class _QueueStreamer(TextStreamer):
    """Puts each finalized piece of text on a queue."""

    def __init__(self, tokenizer: Any, sink: queue.Queue[Any], skip_special_tokens: bool) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=skip_special_tokens)
        self.sink = sink

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.sink.put(text)


class _Cancelled(StoppingCriteria):
    """Ends generation once ``flag`` is set (the chat's Ctrl-C), so the model is free for the next turn."""

    def __init__(self, flag: threading.Event) -> None:
        self.flag = flag

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.flag.is_set(), dtype=torch.bool, device=input_ids.device)


def stream_tokens(
    engine: LoadedModel,
    prompt: list[int],
    generation: GenerationParams,
    cancel: threading.Event | None = None,
    prompt_cache: PromptCache | None = None,
) -> Iterator[str | tuple[str, Usage, FinishReason]]:
    """Yield text deltas, then ``(final_text, usage, finish_reason)``; the deltas add up to the answer.

    Setting ``cancel`` ends generation at the next token. With ``prompt_cache``, generation starts from
    the previous answer's KV cache where the prompts agree, and leaves its own cache there.
    """
    torch = engine.torch
    ids, mask = engine.batch_tensors([prompt])
    vocab = int(engine.model.config.get_text_config().vocab_size)
    processors = build_processors(generation, engine.tokenizer, vocab, ids.shape[1])
    stop_ids = stop_token_ids(generation, engine.tokenizer, engine.model)
    if generation.seed is not None:
        torch.manual_seed(generation.seed)
    pieces: queue.Queue[Any] = queue.Queue()
    streamer = _QueueStreamer(engine.tokenizer, pieces, generation.skip_special_tokens)
    box: dict[str, Any] = {}
    cache, reused = prompt_cache.take(prompt) if prompt_cache is not None else (None, 0)
    if prompt_cache is not None:
        from transformers import DynamicCache

        cache = cache if cache is not None else DynamicCache(config=engine.model.config)
        prompt_cache.last_evaluated = len(prompt) - reused

    def run() -> None:
        try:
            with torch.inference_mode():
                box["output"] = engine.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=generation.max_new_tokens,
                    do_sample=generation.sampling,
                    logits_processor=processors,
                    eos_token_id=stop_ids,
                    pad_token_id=engine.tokenizer.pad_token_id,
                    stop_strings=generation.stop_strings or None,
                    tokenizer=engine.tokenizer if generation.stop_strings else None,
                    streamer=streamer,
                    past_key_values=cache,
                    stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)]) if cancel is not None else None,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    min_p=None,
                )
        except BaseException as exc:
            box["error"] = exc
        finally:
            pieces.put(None)

    worker = threading.Thread(target=run, name="infermux-native-generate", daemon=True)
    worker.start()
    hold = max((len(s) for s in generation.stop_strings or []), default=1) - 1
    text, shown, stopped = "", 0, False
    while (piece := pieces.get()) is not None:
        if stopped:
            continue
        text += piece
        text, stopped = cut_at_stop(text, generation.stop_strings)
        safe = len(text) if stopped else max(shown, len(text) - hold)
        if safe > shown:
            yield text[shown:safe]
            shown = safe
    worker.join()
    if "error" in box:
        raise box["error"]
    if prompt_cache is not None:
        prompt_cache.keep(box["output"][0].tolist(), cache)
    tokens = box["output"][0, ids.shape[1] :].tolist()
    cut = next((i + 1 for i, token in enumerate(tokens) if token in stop_ids), len(tokens))
    _, usage, reason = engine.finish(prompt, tokens[:cut], generation, stop_ids)
    if len(text) > shown:
        yield text[shown:]
    if not generation.exclude_prompt_from_response:
        text = engine.tokenizer.decode(prompt, skip_special_tokens=generation.skip_special_tokens) + text
    yield (text, usage, reason)
