"""NATIVE: local inference with Hugging Face transformers (torch), on CPU or GPU.

- The model and tokenizer load once, at construction (:mod:`.loading`): a local folder, a hub id
  found in the local cache, a ``.gguf`` file, or the embedded default ``smollm2-135m-instruct``.
- Each chunk of conversations is rendered with the chat template, tokenized, sorted by length and cut
  into batches of ``generation.batch_size`` rows (so rows of similar length share a batch and little
  compute goes to padding), left-padded with an attention mask, and generated with the KV cache.
- Rows opening with the same long prefix (a shared system prompt) are kept in one batch; the decode loop
  evaluates that prefix once and shares its KV cache across them.
- Streaming: concurrent ``stream`` calls (``infermux serve``) decode together in one batch that new
  requests join between steps and finished or abandoned ones leave (:mod:`.scheduler`); a request for
  ``n`` answers or log-probabilities joins as ``n`` rows and is answered as ``infer`` answers it. The
  last answer's KV cache is kept, so a chat's next turn evaluates only its new tokens.
- Greedy and sampled decoding run in the engine's own loop (:mod:`.decode`), which drops finished
  rows from the batch; beam search and guided decoding (xgrammar) run through ``model.generate``.
- Sampling happens whenever ``temperature > 0`` (or ``use_sampling``): a temperature means the user
  wants sampling, so it is never silently ignored.
- Tool calling: :mod:`infermux.engines.local.tool_prompting` (rows that force a call decode under their tools'
  schema, in batches of their own).
- Images (image-text-to-text models, :mod:`.vision`): the model's processor and chat template, images
  decoded when their chunk runs; rows with images batch together, through the decode loop where the
  model's text positions are plain (Idefics3, SmolVLM: the images enter the KV cache at the prefill),
  else through ``model.generate``.
- Answers exclude the prompt (unless ``exclude_prompt_from_response`` is false), are decoded with
  ``skip_special_tokens``, and are cut before the first stop string.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

from infermux.configs.generation_params import GenerationParams
from infermux.configs.model_params import ModelParams
from infermux.engines.base import InferenceEngine, StreamEvent
from infermux.engines.capabilities import Capabilities
from infermux.engines.images import ImageError
from infermux.engines.local import tool_prompting
from infermux.engines.local.decoder_thread import emitted_rows
from infermux.engines.native import rows as native_rows
from infermux.engines.native.logprobs import ScoreRecorder
from infermux.engines.native.model import LoadedModel
from infermux.engines.native.torch_thread import TorchThread
from infermux.errors import EngineUnavailableError, ErrorKind, InputError, RowError, install_hint
from infermux.samples import wants_samples
from infermux.types import Conversation, FinishReason, TokenLogprob, Usage

__all__ = ["NativeTextInferenceEngine"]

logger = logging.getLogger("infermux.engines.native.engine")

_SUPPORTED = """seed temperature top_p min_p use_sampling num_beams stop_strings stop_token_ids
    frequency_penalty presence_penalty logit_bias skip_special_tokens n logprobs top_logprobs"""
# Chunks hold several batches, so rows can be grouped by length across them.
_BATCHES_PER_CHUNK = 4
#: One answer of the decode: text, usage, finish reason and (when asked) the tokens' log-probabilities.
Answer = tuple[str, Usage, FinishReason, "list[TokenLogprob] | None"]
# Concurrent streams decoded together at most (more wait for a free row).
_STREAM_ROWS = 32


class NativeTextInferenceEngine(InferenceEngine):
    """Hugging Face transformers on this machine (see the module docstring)."""

    compiles_guided = True
    capabilities: ClassVar[Capabilities] = Capabilities(
        generation_params=frozenset(_SUPPORTED.split()),
        guided_decoding=frozenset({"json", "regex", "choice"}),
        images=True,
        streaming=True,
        lora=True,
        tools=True,
        notes=(
            "images: set model_name to an image-text-to-text model (SmolVLM, Qwen2-VL...; loaded with "
            "AutoModelForImageTextToText and its own processor and chat template) and give rows image_path, "
            "image_url or image_binary parts ([docs/batch.md](batch.md#images)); a text-only model refuses them",
            "guided decoding through xgrammar",
            "tools: rendered by the chat template, or as a Hermes system block; forced calls are schema-"
            "constrained, others parsed from <tool_call> markup (docs/tools.md).",
            "streaming: concurrent streams (infermux serve) decode in one batch that new requests join between "
            "steps, n > 1 as n rows, logprobs included (beam search and guided decoding: one request at a time).",
        ),
    )

    def setup(self) -> None:
        super().setup()
        try:
            import torch

            from infermux.engines.native import loading as native_loading
        except ImportError as exc:
            raise EngineUnavailableError(
                f"The NATIVE engine needs torch and transformers ({exc}). Install them with: " + install_hint("native")
            ) from exc
        self._torch = torch
        #: Loads the model and runs every batch: one OpenMP team for the engine (see :mod:`.torch_thread`).
        self._torch_thread = TorchThread()
        vision = native_loading.is_vision_model(self.model_params)
        processor = None
        if vision:  # the processor may hold the only chat template
            processor = native_loading.load_processor(self.model_params)
        template = getattr(processor, "chat_template", None)
        self.tokenizer: Any = native_loading.load_tokenizer(self.model_params, fallback_template=template)
        self.model: Any = self._torch_thread.run(native_loading.load_model, self.model_params, vision=vision)
        self._device = next(self.model.parameters()).device
        self._max_length = native_rows.prompt_limit(self.model_params, self.tokenizer)
        self._lock = threading.Lock()  # one generation at a time on the model
        from infermux.engines.native.decode import supports_fast_decode, supports_image_decode

        # The stream scheduler feeds token ids only: image models run their batches through the decode loop
        # (prefilled with the processor's inputs) where their text positions are plain, else model.generate.
        self._fast_decode = not vision and supports_fast_decode(self.model)
        self._fast_images = vision and supports_image_decode(self.model)
        self._template_has_tools = tool_prompting.renders_tools(getattr(self.tokenizer, "chat_template", None))
        self._vision: Any = None
        if processor is not None:
            from infermux.engines.native.vision import VisionPrompts

            processor.tokenizer = self.tokenizer  # left-padded, with the configured template
            self._vision = VisionPrompts(processor, self.tokenizer, self._template_has_tools)
        else:  # an instance's own capabilities (serve and chat read them): this model takes no images
            vars(self)["capabilities"] = dataclasses.replace(type(self).capabilities, images=False)
        self.prompt_cache: Any = None
        self._scheduler: Any = None
        if self._fast_decode:  # concurrent streams decode together (plain full-attention caches only)
            from infermux.engines.native.scheduler import PromptCache, StreamScheduler

            #: The last streamed answer's KV cache, reused by the next turn of a chat.
            self.prompt_cache = PromptCache()
            rows = max(_STREAM_ROWS, self.generation_params.batch_size)
            self._scheduler = StreamScheduler(
                self.model, self.tokenizer.pad_token_id, self._lock, self.prompt_cache, rows
            )

    @property
    def loaded(self) -> LoadedModel:
        """The model, tokenizer and device, as the batch and stream paths use them."""
        return LoadedModel(self._torch, self.model, self.tokenizer, self._device)

    # ------------------------------------------------------------------ the seam
    def chunk_size(self, generation: GenerationParams) -> int:
        return generation.batch_size * _BATCHES_PER_CHUNK

    async def _infer_rows(
        self, conversations: list[Conversation], generation: GenerationParams
    ) -> AsyncIterator[tuple[int, Conversation | RowError]]:
        # Each row is handed back as soon as its answer ends (the job records it at once); the work runs on
        # the engine's torch thread, the same one every call (not a new worker thread per event loop).
        work = functools.partial(self._answer, conversations, generation)
        item: tuple[int, Conversation | RowError]
        async for item in emitted_rows(lambda emit: asyncio.wrap_future(self._torch_thread.submit(work, emit))):
            yield item

    def answer_blocking(
        self,
        conversations: list[Conversation],
        generation: GenerationParams,
        emit: Callable[[int, Conversation | RowError], None] | None = None,
    ) -> list[Conversation | RowError]:
        """Answer ``conversations`` in order, blocking, on the engine's torch thread; ``emit(index, result)``
        sees each row as soon as it is finished."""
        return self._torch_thread.run(self._answer, conversations, generation, emit)

    def _answer(
        self,
        conversations: list[Conversation],
        generation: GenerationParams,
        emit: Callable[[int, Conversation | RowError], None] | None = None,
    ) -> list[Conversation | RowError]:
        results: list[Conversation | RowError | None] = [None] * len(conversations)

        def settle(index: int, result: Conversation | RowError) -> None:
            if results[index] is None:
                results[index] = result
                if emit is not None:
                    emit(index, result)

        prompts: dict[int, list[int]] = {}
        visual: dict[int, Any] = {}  # rows with images: their rendered prompt and pictures (.vision)
        for index, conversation in enumerate(conversations):
            try:
                if self._vision is not None and conversation.has_images:
                    visual[index] = self._vision.prepare(conversation, generation)
                    prompts[index] = self._vision.sort_ids(visual[index])
                else:
                    prompts[index] = self._prompt_ids(conversation, index, generation)
            except Exception as exc:  # a bad image or a template error is this row's problem only
                context = "" if isinstance(exc, ImageError) else "chat template failed"
                settle(index, RowError.from_exception(exc, ErrorKind.INVALID_INPUT, context=context))
        # Rows whose tool_choice forces a call decode under their tools' schema: batches never mix settings.
        # Within a setting, rows sharing a long prefix are batched together (see native_rows.batch_order).
        settings = {i: tool_prompting.constrained_generation(conversations[i], generation) for i in prompts}
        groups: dict[str, dict[int, list[int]]] = {}
        for i in prompts:  # rows with images batch apart (their inputs carry pixels)
            groups.setdefault(settings[i].model_dump_json() + ("|images" if i in visual else ""), {})[i] = prompts[i]
        batches: list[list[int]] = []
        for group in groups.values():
            order = native_rows.batch_order(group)
            batches += [order[s : s + generation.batch_size] for s in range(0, len(order), generation.batch_size)]
        n = generation.n
        for rows in batches:
            answered: dict[int, dict[int, Any]] = {}  # row -> its answers so far, by sequence

            def sequence_done(k: int, answer: Any, rows: list[int] = rows, answered: dict[int, Any] = answered) -> None:
                mine = answered.setdefault(k // n, {})
                mine[k % n] = answer
                if len(mine) == n:  # the row's n answers are all done
                    i = rows[k // n]
                    settle(i, native_rows.row_reply(conversations[i], [mine[j] for j in range(n)], generation))

            try:
                with self._lock:  # n sequences per prompt, next to each other
                    inputs, batch = None, [prompts[i] for i in rows for _ in range(n)]
                    if rows[0] in visual:
                        from infermux.engines.native.vision import prompt_rows

                        inputs = self._vision.inputs([visual[i] for i in rows for _ in range(n)], self._device)
                        batch = prompt_rows(inputs)
                    answers = self._generate(batch, settings[rows[0]], sequence_done, inputs)
            except Exception as exc:
                if isinstance(exc, (EngineUnavailableError, InputError)):
                    raise
                logger.exception("NATIVE generation failed for a batch of %d rows", len(rows))
                for i in rows:
                    settle(i, RowError.from_exception(exc))
                continue
            for k, i in enumerate(rows):
                settle(i, native_rows.row_reply(conversations[i], answers[k * n : (k + 1) * n], generation))
        return [r if r is not None else RowError(kind=ErrorKind.INTERNAL, message="row was not run") for r in results]

    # ------------------------------------------------------------------ pieces
    def _prompt_ids(
        self, conversation: Conversation, index: int = 0, generation: GenerationParams | None = None
    ) -> list[int]:
        generation = generation or self.generation_params
        ids = native_rows.render(self.tokenizer, self._template_has_tools, conversation, generation)
        if self._max_length is not None and len(ids) > self._max_length:
            logger.warning(
                "Row %d: the prompt has %d tokens, more than model_max_length %d; keeping its last %d tokens. "
                "Raise model.model_max_length or shorten the conversation.",
                index, len(ids), self._max_length, self._max_length,
            )  # fmt: skip
            ids = ids[-self._max_length :]
        return ids

    @classmethod
    def prompt_counter(
        cls, model_params: ModelParams, generation: GenerationParams
    ) -> Callable[[Conversation], int] | None:
        """Count a row's prompt tokens as a job would (chat template applied) with the tokenizer alone (the
        weights are not loaded), for ``--dry-run``."""
        from infermux.engines.native.loading import load_tokenizer

        tokenizer = load_tokenizer(model_params)
        has_tools = tool_prompting.renders_tools(getattr(tokenizer, "chat_template", None))
        return lambda conversation: len(native_rows.render(tokenizer, has_tools, conversation, generation))

    def _generate(
        self,
        prompts: list[list[int]],
        generation: GenerationParams,
        on_answer: Callable[[int, Answer], None] | None = None,
        inputs: dict[str, Any] | None = None,
    ) -> list[Answer]:
        """Answer ``prompts``; ``on_answer(index, answer)`` sees each answer as it ends (where the decode
        loop runs; ``model.generate`` ends them all at once). ``inputs``: the batch's model inputs made by a
        vision model's processor (ids, mask and pixels), used instead of ``prompts``' ids."""
        from infermux.engines.native import params

        torch = self._torch
        loaded = self.loaded
        ids, mask = (inputs["input_ids"], inputs["attention_mask"]) if inputs else loaded.batch_tensors(prompts)
        vocab = int(self.model.config.get_text_config().vocab_size)
        processors = params.build_processors(generation, self.tokenizer, vocab, ids.shape[1])
        stop_ids = params.stop_token_ids(generation, self.tokenizer, self.model)
        generator = None
        if generation.seed is not None:
            torch.manual_seed(generation.seed)
            generator = torch.Generator(device=self._device).manual_seed(generation.seed)
        fast = self._fast_images if inputs else self._fast_decode
        fast = fast and generation.num_beams == 1 and generation.guided_decoding is None
        recorder = ScoreRecorder(len(prompts), generation.top_logprobs) if generation.logprobs else None

        ended: dict[int, Answer] = {}

        def answer(row: int, tokens: list[int]) -> Answer:
            if row not in ended:
                scores = None
                if recorder is not None:
                    scores = recorder.logprobs(row, len(tokens), self.tokenizer, stop_ids)
                ended[row] = (*loaded.finish(prompts[row], tokens, generation, stop_ids), scores)
            return ended[row]

        def finished(row: int, tokens: list[int]) -> None:
            if on_answer is not None:
                on_answer(row, answer(row, tokens))

        with torch.inference_mode():
            if fast:
                from infermux.engines.native.decode import decode

                new_tokens = decode(
                    self.model,
                    prompts,
                    pad_id=self.tokenizer.pad_token_id,
                    max_new_tokens=generation.max_new_tokens,
                    processors=processors,
                    sample=generation.sampling,
                    stop_ids=stop_ids,
                    should_stop=params.stop_string_check(self.tokenizer, generation),
                    generator=generator,
                    on_step=recorder,
                    on_finish=finished,
                    inputs=inputs,
                )
            else:
                from infermux.engines.native.hf_generate import hf_generate

                extra = {k: v for k, v in (inputs or {}).items() if k not in ("input_ids", "attention_mask")}
                new_tokens = hf_generate(self.model, self.tokenizer, ids, mask, generation, processors, stop_ids, vocab,
                                         recorder, extra)  # fmt: skip
        return [answer(row, tokens) for row, tokens in enumerate(new_tokens)]

    # ------------------------------------------------------------------ streaming
    async def _stream(self, conversation: Conversation, generation: GenerationParams) -> AsyncIterator[StreamEvent]:
        """Stream one answer token by token; concurrent calls decode together (:mod:`.scheduler`)."""
        forced = tool_prompting.constrained_generation(conversation, generation) is not generation
        samples = wants_samples(generation)
        # Beam search and guided decoding (forced tool calls too) run through model.generate, which owns
        # its whole batch and cache: they cannot join the scheduler's steps, so they take the model lock.
        # n > 1 and logprobs without a scheduler (models the decode loop cannot drive) take it as well.
        whole = generation.guided_decoding is not None or generation.num_beams > 1 or forced
        whole = whole or (self._vision is not None and conversation.has_images)  # images: the batch path
        if whole or (samples and self._scheduler is None):
            async for event in super()._stream(conversation, generation):
                yield event
            return
        from infermux.engines.native import params, stream

        prompt = await asyncio.to_thread(self._prompt_ids, conversation, 0, generation)  # off the event loop
        if self._scheduler is not None:
            stop = params.stop_string_check(self.tokenizer, generation)
            source = stream.scheduled(self.loaded, self._scheduler, prompt, generation,
                                      (lambda tokens: stop(0, tokens)) if stop is not None else None,
                                      samples=samples)  # fmt: skip
        else:
            source = stream.threaded(self.loaded, self._lock, prompt, generation)
        shown = tool_prompting.StreamedText(conversation, generation)  # calls' markup is not text
        async with contextlib.aclosing(source):
            async for item in source:
                if isinstance(item, str):
                    yield StreamEvent(delta=shown.feed(item))
                elif isinstance(item, stream.ScoredDelta):  # one answer's text with its tokens' scores
                    yield StreamEvent(delta=shown.feed(item.text), logprobs=item.logprobs)
                else:
                    if isinstance(item, list):  # n answers and/or logprobs: the shape `infer` gives them
                        reply = native_rows.row_reply(conversation, item, generation)
                        metadata = dict(reply.metadata)
                    else:
                        text, usage, reason = item
                        reply = native_rows.reply(conversation, text, usage, reason, generation)
                        metadata = {"usage": reply.metadata["usage"], "finish_reason": reply.metadata["finish_reason"]}
                    if rest := shown.rest(reply.last_message.text):
                        yield StreamEvent(delta=rest)
                    yield StreamEvent(conversation=reply, metadata=metadata)

    @property
    def stats(self) -> dict[str, int]:
        """Streaming decoder counters: decode steps, most rows in one step, requests admitted (and of
        those, joined to a running batch), cancelled, tokens generated, prompt tokens evaluated."""
        if self._scheduler is None:
            return {}
        return {**self._scheduler.stats, "active": self._scheduler.active}

    def close(self) -> None:
        if getattr(self, "_scheduler", None) is not None:
            self._scheduler.close()
        if getattr(self, "_torch_thread", None) is not None:
            self._torch_thread.close()
        self.model = None
        self.tokenizer = None
