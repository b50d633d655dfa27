"""LLAMACPP: GGUF models on llama-cpp-python, several conversations decoded together.

The model is loaded by ``llama_cpp.Llama`` (``model_kwargs`` pass straight to it: ``n_gpu_layers``,
``n_ctx``, ``n_batch``, ``n_threads``, ``low_vram``, ...). Conversations are rendered with the model's own
chat template (or ``model.chat_template``) exactly as ``Llama.create_chat_completion`` renders them, and
answered by a :class:`~infermux.engines.llamacpp.decode.MultiSequenceDecoder`, which decodes up to
``n_seq_max`` sequences per llama.cpp call instead of one conversation at a time; greedy answers are the
same as ``create_chat_completion``'s. One decoder thread (:mod:`.scheduler`) serves batch chunks and
streams alike: a stream (a chat turn, a server request) joins the sequences already generating between
two steps, and a stream whose consumer goes away frees its slot. Prompt KV is reused across rows and
turns (:mod:`.prefix`): a shared system prompt is evaluated once, a chat turn evaluates only its new
tokens. ``stats`` counts evaluated prompt tokens and the most sequences decoded together.

Engine-specific ``model_kwargs`` (not passed to ``Llama``):

- ``filename``: the ``.gguf`` file inside a folder or a cached hub repository (a name or a glob);
- ``n_seq_max``: sequences decoded together (default: ``generation.batch_size`` when above 1, else 32,
  fewer if their KV cache would exceed 1.5 GiB). Each sequence has its own ``n_ctx`` of KV cache;
- ``mmproj`` (or ``clip_model_path``): a vision model's projector ``.gguf`` (a path, or a name or glob beside
  the model file); rows may then carry images (:mod:`.media`). Without it, a row with images fails with the
  reason;
- ``use_extra_bufts``: llama.cpp's extra buffer types (AMX, weight repacking). Default: on, except on a
  CPU with AMX under a build with AMX kernels, whose path crashes (see :mod:`.cpu`); ``true`` turns them
  back on for a build known to work there.

Threads (:mod:`.settings`): ``n_threads`` and ``n_threads_batch`` one per physical core (llama.cpp's own
default; llama-cpp-python's is half the CPUs for ``n_threads``); flash attention on, with a bfloat16 V cache, so
that each answer is still the one its sequence gets alone. A ``model_kwargs`` key wins.

Unless ``OMP_WAIT_POLICY`` is set, llama.cpp's threads wait passively for each other when other work
keeps the machine busy at start-up, and keep OpenMP's default (spin, then sleep) on an idle machine:
see :mod:`.threads`.

Tool calling: see :mod:`infermux.engines.local.tool_prompting` (rows that force a call decode under their
tools' grammar).

``n_ctx`` is the context of each sequence; it defaults to ``model.model_max_length``, else 2048.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from infermux.configs.generation_params import GenerationParams
from infermux.configs.model_params import ModelParams
from infermux.engines.base import InferenceEngine, StreamEvent, remember
from infermux.engines.capabilities import Capabilities
from infermux.engines.images import ImageError
from infermux.engines.llamacpp.cpu import load_summary, model_defaults
from infermux.engines.llamacpp.decode import DecodeResult, MultiSequenceDecoder, Request, SamplingSpec
from infermux.engines.llamacpp.grammar import grammar_for
from infermux.engines.llamacpp.loading import check_llama_kwargs, default_slots, pop_projector, resolve_gguf
from infermux.engines.llamacpp.media import MediaPrompt, split_prompt
from infermux.engines.llamacpp.prompt import chat_formatter, render_prompt
from infermux.engines.llamacpp.samples import StreamedLogprobs, generate_samples
from infermux.engines.llamacpp.scheduler import DecodeScheduler
from infermux.engines.llamacpp.settings import llama_kwargs
from infermux.engines.llamacpp.threads import choose_omp_wait_policy
from infermux.engines.local import tool_prompting
from infermux.engines.local.decoder_thread import thread_rows
from infermux.errors import ConfigError, EngineUnavailableError, ErrorKind, InputError, RowError, install_hint
from infermux.samples import reply_with_samples, wants_samples
from infermux.types import Conversation, FinishReason, Sample, TokenLogprob, Usage

__all__ = ["LlamaCppInferenceEngine"]

log = logging.getLogger(__name__)

_NO_PROJECTOR = (
    "this LLAMACPP model was loaded without a projector, so it takes no images: set model.model_kwargs.mmproj "
    "to the vision model's mmproj .gguf file (docs/batch.md#images), or remove the images."
)
#: A rendered prompt: token ids, or keys and image chunks (.media).
_Prompt = list[int] | MediaPrompt
#: A streamed piece of text and, with logprobs, the tokens behind it.
_Text = tuple[str, list[TokenLogprob] | None]
_SUPPORTED = frozenset(
    {"seed", "temperature", "top_p", "min_p", "frequency_penalty", "presence_penalty"}
    | {"stop_strings", "stop_token_ids", "logit_bias", "use_sampling", "skip_special_tokens"}
    | {"n", "logprobs", "top_logprobs"}
)


class LlamaCppInferenceEngine(InferenceEngine):
    """Local GGUF inference with llama.cpp (CPU, or GPU layers with ``n_gpu_layers``)."""

    compiles_guided = True
    capabilities = Capabilities(
        generation_params=_SUPPORTED,
        guided_decoding=frozenset({"json", "choice", "regex"}),
        streaming=True,
        tools=True,
        images=True,
        notes=(
            "tools: rendered by the chat template, or as a Hermes system block; forced calls are grammar-"
            "constrained, others parsed from <tool_call> markup (docs/tools.md).",
            "num_beams: llama.cpp has no beam search.",
            "adapter_model: pass a GGUF LoRA as model_kwargs.lora_path instead.",
            "images: a vision GGUF with its projector file in model_kwargs.mmproj (llama.cpp's mtmd library, as "
            "llama-cpp-python's MTMDChatHandler); rows with images decode beside text rows "
            "([docs/batch.md](batch.md#images)). A model loaded without a projector refuses them.",
            "regex guided decoding: patterns are translated to a grammar; look-arounds, back-references "
            "and flags are refused.",
            "prompt KV is reused: rows sharing a prefix (a long system prompt, few-shot examples) evaluate it "
            "once, with the same answers as without reuse; a streamed chat turn keeps its answer's KV, so the "
            "next turn evaluates only its new message (answers as llama-cpp-python's own chat loop).",
            "concurrent streams (infermux serve, several chats) join one running decoder between steps "
            "(continuous batching); a stream whose client leaves frees its sequence.",
            "CPUs with AMX: llama.cpp's AMX path crashes (llama.cpp #20824), so a build with AMX kernels loads "
            "with its extra buffer types (AMX, weight repacking) off there; model_kwargs.use_extra_bufts: true "
            "turns them back on. `infermux engines --verbose` shows what was chosen.",
            "threads: n_threads and n_threads_batch default to one per physical core (llama.cpp's own default); "
            "flash attention is on with a bfloat16 V cache (type_v; K float16): K and V of different types keep "
            "llama.cpp's CPU kernel the same whatever the batch, so an answer does not depend on its neighbours or "
            "on prefix reuse (with both float16, as llama-server, it does). Off with n_gpu_layers. model_kwargs "
            "n_threads, n_threads_batch, flash_attn, type_k, type_v override them.",
        ),
    )

    def setup(self) -> None:
        super().setup()
        choose_omp_wait_policy()
        try:
            import llama_cpp
        except ImportError as exc:
            raise EngineUnavailableError(
                f"The LLAMACPP engine needs llama-cpp-python ({exc}). Install it with: {install_hint('llamacpp')}"
            ) from exc
        kwargs = dict(self.model_params.model_kwargs)
        filename = kwargs.pop("filename", None)
        slots = kwargs.pop("n_seq_max", None)
        extra_bufts = kwargs.pop("use_extra_bufts", None)
        projector_file = pop_projector(kwargs)
        if extra_bufts is not None and not isinstance(extra_bufts, bool):
            raise ConfigError(f"model.model_kwargs.use_extra_bufts must be true or false, not {extra_bufts!r}.")
        check_llama_kwargs(llama_cpp.Llama, kwargs)
        self.model_path = resolve_gguf(self.model_params.model_name, filename, self.model_params.model_revision)
        kwargs = llama_kwargs(kwargs, n_ctx=self.model_params.model_max_length)
        try:
            with model_defaults(use_extra_bufts=extra_bufts) as extra_bufts:
                self._llama = llama_cpp.Llama(model_path=str(self.model_path), **kwargs)
        except ValueError as exc:
            raise ConfigError(f"llama.cpp could not load {self.model_path}: {exc}") from exc
        log.debug("llama.cpp loaded %s: %s", self.model_path.name, load_summary(self._llama, extra_bufts))
        self._template = chat_formatter(self._llama, self.model_params.chat_template)
        self._template_has_tools = tool_prompting.renders_tools(self._template.template)
        n_ctx_seq = int(self._llama.n_ctx())
        if slots is None:
            batch = self.generation_params.batch_size
            slots = batch if batch > 1 else default_slots(self._llama, n_ctx_seq)
        self._projector: Any = None
        if projector_file is not None:
            from infermux.engines.llamacpp.media import Projector, resolve_projector

            self._projector = Projector(self._llama, resolve_projector(projector_file, self.model_path))
        else:  # an instance's own capabilities (serve and chat read them): this model takes no images
            vars(self)["capabilities"] = dataclasses.replace(type(self).capabilities, images=False)
        self._decoder = MultiSequenceDecoder(self._llama, int(slots), n_ctx_seq, self._projector)
        self._scheduler = DecodeScheduler(self._decoder)
        self._specs: dict[str, SamplingSpec] = {}
        self._spec(self.generation_params)

    # ------------------------------------------------------------------ batching
    def chunk_size(self, generation: GenerationParams) -> int:
        # Enough rows that freed slots are refilled at once (continuous batching).
        return max(generation.batch_size, 4 * self._decoder.n_slots)

    def max_concurrency(self) -> int:
        return 2  # the next chunk joins the decoder while the previous one drains: no chunk tails

    @property
    def stats(self) -> dict[str, int]:
        """Decoder counters: prompt tokens evaluated (not reused), decode steps, most sequences in one step."""
        d = self._decoder
        return {
            "prompt_tokens_evaluated": d.prompt_tokens_evaluated,
            "steps": d.steps,
            "max_active": d.max_active,
            "active": len(d.active),
        }

    def check_conversation(self, conversation: Conversation) -> RowError | None:
        if self._projector is None and conversation.has_images:
            return RowError(kind=ErrorKind.UNSUPPORTED_INPUT, message=_NO_PROJECTOR)
        return super().check_conversation(conversation)

    def _check(self, generation: GenerationParams, *, tools: bool = False) -> None:
        super()._check(generation, tools=tools)
        self._spec(generation)  # an invalid grammar or bias fails before the job starts

    async def _infer_rows(
        self, conversations: list[Conversation], generation: GenerationParams
    ) -> AsyncIterator[tuple[int, Conversation | RowError]]:
        # Each row is handed back the moment the decoder finishes it (the job records it at once).
        async for item in thread_rows(functools.partial(self._generate, conversations, generation)):
            yield item

    def _generate(
        self,
        conversations: list[Conversation],
        generation: GenerationParams,
        emit: Callable[[int, Conversation | RowError], None],
    ) -> None:
        """Answer ``conversations`` (blocking), passing each row to ``emit(index, result)`` as it finishes."""
        prompts: list[_Prompt | RowError] = [self._prompt(c, generation) for c in conversations]
        for index, prompt in enumerate(prompts):
            if isinstance(prompt, RowError):
                emit(index, prompt)
        if wants_samples(generation):
            runnable = [p for p in prompts if not isinstance(p, RowError)]
            out = self._generate_samples(conversations, prompts, runnable, generation, self._spec(generation))
            for index, result in enumerate(out):
                if not isinstance(prompts[index], RowError):
                    emit(index, result)
            return
        # Rows whose tool_choice forces a call decode under their tools' grammar: one scheduler call per grammar.
        groups: dict[str, list[int]] = {}
        settings: dict[str, GenerationParams] = {}
        for index, (conv, prompt) in enumerate(zip(conversations, prompts, strict=True)):
            if not isinstance(prompt, RowError):
                row_generation = tool_prompting.constrained_generation(conv, generation)
                key = row_generation.model_dump_json()
                groups.setdefault(key, []).append(index)
                settings[key] = row_generation
        for key, rows in groups.items():
            spec = self._spec(settings[key])
            runnable = [p for p in (prompts[i] for i in rows) if not isinstance(p, RowError)]
            for k, decoded in self._scheduler.generate_each(runnable, generation.max_new_tokens, spec):
                index = rows[k]
                if isinstance(decoded, Exception):
                    emit(index, RowError.from_exception(decoded))
                else:
                    emit(index, self._reply(conversations[index], runnable[k], decoded, generation))

    def _generate_samples(
        self,
        conversations: list[Conversation],
        prompts: list[_Prompt | RowError],
        runnable: list[_Prompt],
        generation: GenerationParams,
        spec: SamplingSpec,
    ) -> list[Conversation | RowError]:
        """``generation.n`` answers per row and/or log-probabilities (:mod:`.samples`)."""
        decoded = iter(generate_samples(self._scheduler, self._llama, runnable, generation.max_new_tokens, spec,
                                        n=generation.n, logprobs=generation.logprobs,
                                        top_logprobs=generation.top_logprobs))  # fmt: skip
        out: list[Conversation | RowError] = []
        for conv, prompt in zip(conversations, prompts, strict=True):
            answers = prompt if isinstance(prompt, RowError) else next(decoded)
            if isinstance(answers, RowError):
                out.append(answers)
            elif isinstance(answers, Exception):
                out.append(RowError.from_exception(answers))
            else:
                samples = [
                    Sample(
                        text=self._reply(conv, prompt, result, generation).last_message.text,  # type: ignore[arg-type]
                        finish_reason=FinishReason.parse(result.finish_reason),
                        usage=Usage.of(completion=len(result.tokens)),
                        logprobs=logprobs,
                    )
                    for result, logprobs in answers
                ]
                usage = Usage.of(answers[0][0].prompt_tokens, sum(len(res.tokens) for res, _ in answers))
                out.append(reply_with_samples(conv, samples, usage=usage, generation=generation))
        return out

    def _reply(
        self, conv: Conversation, prompt: _Prompt, result: DecodeResult, generation: GenerationParams
    ) -> Conversation:
        text, calls = tool_prompting.finish(result.text, conv, generation)
        if not generation.exclude_prompt_from_response:
            special = not generation.skip_special_tokens
            shown = (
                prompt.display(self._llama, special)
                if isinstance(prompt, MediaPrompt)
                else self._llama.detokenize(prompt, special=special).decode("utf-8", errors="ignore")
            )
            text = shown + (text or "")
        usage = Usage.of(result.prompt_tokens, len(result.tokens))
        finish_reason = FinishReason.TOOL_CALLS if calls else FinishReason.parse(result.finish_reason)
        return conv.with_reply(text, usage=usage, finish_reason=finish_reason, tool_calls=calls)

    # ------------------------------------------------------------------ streaming
    async def _stream(self, conversation: Conversation, generation: GenerationParams) -> AsyncIterator[StreamEvent]:
        """Yield text as the tokens are generated (with their log-probabilities when asked), then the final
        conversation."""
        if generation.n > 1:  # several answers: the whole answer at once
            async for event in super()._stream(conversation, generation):
                yield event
            return
        # The chat template and a grammar take time that grows with the request: not on the event loop.
        prompt = await asyncio.to_thread(self._prompt, conversation, generation)
        if isinstance(prompt, RowError):
            raise InputError(prompt.message)
        constrained = tool_prompting.constrained_generation(conversation, generation)
        spec = await asyncio.to_thread(self._spec, constrained)
        forced = constrained is not generation
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[_Text | DecodeResult | Exception] = asyncio.Queue()
        scores = StreamedLogprobs(self._llama, generation.top_logprobs) if generation.logprobs else None

        def put(item: _Text | DecodeResult | Exception) -> None:
            with contextlib.suppress(RuntimeError):  # the event loop may be gone after a cancel
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def text(delta: str) -> None:  # on the decoder's thread: the tokens behind this text go with it
            put((delta, scores.take(len(request.tokens)) if scores is not None else None))

        # A stream is a chat turn: its answer's KV is kept, so the next turn evaluates only its new message.
        # A forced call's JSON is internal: it is not streamed as text; the final event carries the calls.
        keys, media = split_prompt(prompt)
        request = Request(keys, generation.max_new_tokens, spec, on_done=put, on_text=None if forced else text,
                          keep_answer=True, on_logits=scores.on_logits if scores is not None else None,
                          media=media)  # fmt: skip
        self._scheduler.submit(request)
        shown = tool_prompting.StreamedText(conversation, generation)  # calls' markup is not text
        try:
            while isinstance(item := await queue.get(), tuple):
                yield StreamEvent(delta=shown.feed(item[0]), logprobs=item[1])
        finally:
            if not request.finished:
                self._scheduler.cancel(request)  # the consumer went away: free the slot
        result = item
        if isinstance(result, Exception):
            raise InputError(str(result))
        reply = self._reply(conversation, prompt, result, generation)
        if scores is not None:  # tokens that made no text (a cut character, a stop string), then the row's samples
            if rest := scores.take(len(result.tokens)):
                yield StreamEvent(logprobs=rest)
            reply = scores.answer(conversation, reply, result)
        if tail := shown.rest(reply.last_message.text):
            yield StreamEvent(delta=tail)
        yield StreamEvent(conversation=reply, metadata=dict(reply.metadata))

    # ------------------------------------------------------------------ helpers
    def prompt_tokens(self, conversation: Conversation) -> list[int]:
        """The token ids the model sees for ``conversation`` (chat template applied; an image chunk as negative
        keys, one per position it takes)."""
        prompt = self._prompt(conversation)
        if isinstance(prompt, RowError):
            raise InputError(prompt.message)
        return split_prompt(prompt)[0]

    def _prompt(self, conversation: Conversation, generation: GenerationParams | None = None) -> _Prompt | RowError:
        generation = generation or self.generation_params
        try:
            if conversation.has_images:
                if self._projector is None:
                    return RowError(kind=ErrorKind.UNSUPPORTED_INPUT, message=_NO_PROJECTOR)
                return self._projector.prompt(  # type: ignore[no-any-return]
                    self._llama, self._template, self._template_has_tools, conversation, generation
                )
            return render_prompt(self._llama, self._template, self._template_has_tools, conversation, generation)
        except ImageError as exc:  # names the message and the file
            return RowError(kind=ErrorKind.INVALID_INPUT, message=str(exc))
        except UnicodeEncodeError as exc:  # a lone surrogate (Python API input): this row's fault, not the chunk's
            return RowError(
                kind=ErrorKind.INVALID_INPUT, message=f"the conversation is not valid Unicode: {exc.reason}"
            )
        except Exception as exc:  # the template's own raise_exception, or a Jinja error
            return RowError.from_exception(
                exc, ErrorKind.INVALID_INPUT, context="the chat template rejected this conversation"
            )

    @classmethod
    def prompt_counter(
        cls, model_params: ModelParams, generation: GenerationParams
    ) -> Callable[[Conversation], int] | None:
        """Count a row's prompt tokens as a job would (chat template applied) from the GGUF's vocabulary
        alone (``vocab_only``: the weights are not read), for ``--dry-run``."""
        import llama_cpp

        path = resolve_gguf(
            model_params.model_name, model_params.model_kwargs.get("filename"), model_params.model_revision
        )
        from llama_cpp._utils import suppress_stdout_stderr

        with suppress_stdout_stderr(disable=False):  # llama.cpp warns of a context it never uses here
            llama = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        template = chat_formatter(llama, model_params.chat_template)
        has_tools = tool_prompting.renders_tools(template.template)
        return lambda conversation: len(render_prompt(llama, template, has_tools, conversation, generation))

    def _spec(self, generation: GenerationParams) -> SamplingSpec:
        key = generation.model_dump_json()
        if key not in self._specs:
            remember(self._specs, key, SamplingSpec(
                greedy=not generation.sampling,
                temperature=generation.temperature,
                top_p=generation.top_p,
                min_p=generation.min_p,
                frequency_penalty=generation.frequency_penalty,
                presence_penalty=generation.presence_penalty,
                seed=generation.seed,
                logit_bias=tuple(self._bias_token(k, v) for k, v in generation.logit_bias.items()),
                grammar=grammar_for(generation.guided_decoding) if generation.guided_decoding else None,
                stop_strings=tuple(generation.stop_strings or ()),
                stop_token_ids=frozenset(generation.stop_token_ids or ()),
                special=not generation.skip_special_tokens,
            ))  # fmt: skip
        return self._specs[key]

    def _bias_token(self, key: str, bias: float) -> tuple[int, float]:
        if key.lstrip("-").isdigit():
            token = int(key)
            n_vocab = self._llama.n_vocab()
            if not 0 <= token < n_vocab:
                raise ConfigError(
                    f"generation.logit_bias: token id {token} is outside the vocabulary (0..{n_vocab - 1})."
                )
            return token, float(bias)
        ids = self._llama.tokenize(key.encode("utf-8"), add_bos=False, special=True)
        if len(ids) != 1:
            raise ConfigError(
                f"generation.logit_bias: {key!r} is {len(ids)} tokens for this model, not one; use token ids as keys."
            )
        return int(ids[0]), float(bias)

    def close(self) -> None:
        scheduler = getattr(self, "_scheduler", None)
        if scheduler is not None:
            scheduler.close()
        if getattr(self, "_projector", None) is not None:
            self._projector.close()  # before the model it was loaded onto
        llama = getattr(self, "_llama", None)
        if llama is not None:
            llama.close()
            del self._llama
