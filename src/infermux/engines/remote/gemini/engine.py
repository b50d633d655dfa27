"""GOOGLE_GEMINI: the Gemini API's ``models/{model}:generateContent`` (generativelanguage.googleapis.com).

Protocol mapping (from Google's Gemini API reference):

* roles ``user`` and ``model`` (assistant); consecutive same-role turns merged; system messages go to
  ``systemInstruction``;
* images: bytes (paths, binary, data URLs) as ``inlineData`` {mimeType, data}; URLs as ``fileData``
  {mimeType, fileUri};
* ``generationConfig``: maxOutputTokens, temperature, topP, stopSequences (at most 5), seed,
  presencePenalty, frequencyPenalty;
* guided JSON: ``responseMimeType: application/json`` with ``responseSchema``, the JSON schema
  rewritten to Gemini's OpenAPI subset (``$ref``/``$defs`` inlined); guided choice:
  ``text/x.enum`` with a string enum;
* ``n``: ``candidateCount``; log-probabilities: ``responseLogprobs`` and ``logprobs`` (top alternatives),
  read back from each candidate's ``logprobsResult`` (``chosenCandidates``, ``topCandidates``);
* function calling and thoughts: see :mod:`.tools`;
* auth: the ``x-goog-api-key`` header (``GEMINI_API_KEY``). Google answers a bad key with 400
  ``API_KEY_INVALID``; the error message then says which variable to fix.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from infermux.configs.generation_params import GenerationParams
from infermux.engines.capabilities import Capabilities
from infermux.engines.remote.base import RemoteEngine
from infermux.engines.remote.gemini.tools import call_parts, function_response_part, reply_parts, tool_fields
from infermux.engines.remote.http.sse import SseEvent
from infermux.engines.remote.http.transport import HttpRequest, default_error_message
from infermux.engines.remote.http.urls import endpoint_url
from infermux.engines.remote.json_schema import to_gemini_schema
from infermux.engines.remote.media import image_payload
from infermux.engines.remote.messages import merge_turns
from infermux.engines.seeds import GEMINI_SEEDS, fold_seed
from infermux.engines.tool_calls import CallPairing
from infermux.errors import RemoteError
from infermux.samples import reply_with_samples, token_logprob
from infermux.types import Conversation, FinishReason, Message, Sample, TokenLogprob, Usage

if TYPE_CHECKING:
    from infermux.engines.batch_client import BatchClient

__all__ = ["GoogleGeminiInferenceEngine", "build_contents", "gemini_body", "gemini_reply", "generation_config"]

_MAX_STOPS = 5


def _parts(message: Message) -> list[dict[str, Any]]:
    if not isinstance(message.content, list):
        return [{"text": message.text}]
    parts: list[dict[str, Any]] = []
    for item in message.content:
        if not item.is_image():
            parts.append({"text": item.content or ""})
            continue
        image = image_payload(item)
        if image.data is not None:
            if image.media_type is None:
                raise ValueError("cannot tell the image's type (expected PNG, JPEG, GIF or WebP)")
            parts.append({"inlineData": {"mimeType": image.media_type, "data": image.base64}})
        else:
            parts.append({"fileData": {"mimeType": image.media_type or "image/jpeg", "fileUri": image.url}})
    return parts


def build_contents(conversation: Conversation) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The ``systemInstruction`` (or None) and ``contents`` of a request for ``conversation``. A tool
    message without ``tool_call_id`` answers the next unanswered call."""
    names: dict[str, str] = {}  # call id -> function name, for functionResponse parts

    def calls(message: Message, ids: list[str]) -> list[dict[str, Any]]:
        names.update({i: call.function.name for i, call in zip(ids, message.tool_calls or [], strict=True)})
        return call_parts(message, ids, conversation.metadata)

    def result(message: Message, call_id: str) -> dict[str, Any] | None:
        return function_response_part(message, names[call_id]) if call_id in names else None

    system, contents = merge_turns(
        conversation,
        CallPairing("call"),
        content=_parts,
        calls=calls,
        result=result,
        assistant="model",
        key="parts",
        unanswered="is a tool result that answers no earlier function call",
    )
    instruction = {"parts": [{"text": "\n\n".join(system)}]} if system else None
    return instruction, contents


def generation_config(generation: GenerationParams) -> dict[str, Any]:
    """``generationConfig`` for ``generation``."""
    config: dict[str, Any] = {
        "maxOutputTokens": generation.max_new_tokens,
        "temperature": generation.temperature,
        "topP": generation.top_p,
    }
    if generation.stop_strings:
        if len(generation.stop_strings) > _MAX_STOPS:
            raise ValueError(f"Gemini takes at most {_MAX_STOPS} stop strings, got {len(generation.stop_strings)}")
        config["stopSequences"] = list(generation.stop_strings)
    if generation.seed is not None:
        config["seed"] = fold_seed(generation.seed, *GEMINI_SEEDS)
    if generation.presence_penalty:
        config["presencePenalty"] = generation.presence_penalty
    if generation.frequency_penalty:
        config["frequencyPenalty"] = generation.frequency_penalty
    if generation.n > 1:
        config["candidateCount"] = generation.n
    if generation.logprobs:
        config["responseLogprobs"] = True
        if generation.top_logprobs:
            config["logprobs"] = generation.top_logprobs
    guided = generation.guided_decoding
    if guided is not None and guided.kind == "json":
        config["responseMimeType"] = "application/json"
        config["responseSchema"] = to_gemini_schema(guided.schema_dict() or {})
    elif guided is not None and guided.kind == "choice":
        config["responseMimeType"] = "text/x.enum"
        config["responseSchema"] = {"type": "STRING", "enum": list(guided.choice or [])}
    return config


_USAGE_COUNTS = ("promptTokenCount", "candidatesTokenCount", "thoughtsTokenCount", "totalTokenCount")


def parse_usage(usage: Any) -> Usage | None:
    """``usageMetadata`` in our terms, None when the reply has none (unknown, never zeros).

    Google bills thinking at the output rate but counts it apart: ``candidatesTokenCount`` leaves out
    ``thoughtsTokenCount``. Our ``completion_tokens`` is both (as OpenAI's includes ``reasoning_tokens``),
    and ``reasoning_tokens`` the thoughts; ``prompt_tokens`` adds ``toolUsePromptTokenCount`` (the
    tool-use prompt, billed as input) to ``promptTokenCount`` (which already holds the cached content).
    Counts of zero are left out of Google's JSON: a count missing from a present object is 0."""
    if not isinstance(usage, dict) or not any(key in usage for key in _USAGE_COUNTS):
        return None
    thoughts = int(usage.get("thoughtsTokenCount") or 0)
    prompt = int(usage.get("promptTokenCount") or 0) + int(usage.get("toolUsePromptTokenCount") or 0)
    return Usage.of(
        prompt, int(usage.get("candidatesTokenCount") or 0) + thoughts, usage.get("totalTokenCount"),
        cached_tokens=usage.get("cachedContentTokenCount"), reasoning_tokens=thoughts or None,
    )  # fmt: skip


def usage_metadata(data: dict[str, Any]) -> dict[str, Any]:
    """``{"usage": {...}}`` for a reply's metadata, or ``{}`` when the reply reports no usage."""
    usage = parse_usage(data.get("usageMetadata"))
    return {} if usage is None else {"usage": usage.to_json_dict()}


def blocked_prompt(data: dict[str, Any]) -> dict[str, Any] | None:
    """Metadata of a reply whose prompt was blocked (``promptFeedback.blockReason``, no candidates)."""
    feedback = data.get("promptFeedback") or {}
    if data.get("candidates") or "blockReason" not in feedback:
        return None
    blocked = {"finish_reason": FinishReason.CONTENT_FILTER, "block_reason": feedback["blockReason"]}
    blocked.update(usage_metadata(data))
    return blocked


def parse_candidate(data: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The answer's parts and the metadata of a ``GenerateContentResponse``."""
    candidates = data.get("candidates")
    if not candidates:
        blocked = blocked_prompt(data)
        if blocked is None:
            raise ValueError("the reply has neither candidates nor promptFeedback")
        return [], blocked
    first = candidates[0]
    parts = (first.get("content") or {}).get("parts") or []
    metadata: dict[str, Any] = {
        **usage_metadata(data),
        "finish_reason": FinishReason.parse(first.get("finishReason")),
        "model": data.get("modelVersion"),
    }
    return parts, metadata


def reply(
    conversation: Conversation, parts: list[dict[str, Any]], metadata: dict[str, Any], generation: GenerationParams
) -> Conversation:
    """``conversation`` with the answer made of ``parts`` (text, function calls, thoughts)."""
    text, calls, reasoning, update = reply_parts(parts, conversation, generation)
    if calls and metadata.get("finish_reason") == FinishReason.STOP:
        metadata["finish_reason"] = FinishReason.TOOL_CALLS
    return conversation.with_reply(text, {**metadata, **update}, tool_calls=calls, reasoning_content=reasoning)


def candidate_logprobs(candidate: dict[str, Any]) -> list[TokenLogprob] | None:
    """A candidate's ``logprobsResult`` as typed token log-probabilities (None when not sent)."""
    result = candidate.get("logprobsResult")
    if result is None:
        return None
    tops = result.get("topCandidates") or []
    out = []
    for step, chosen in enumerate(result.get("chosenCandidates") or []):
        alternatives = (tops[step].get("candidates") or []) if step < len(tops) else []
        top = [(a.get("token", ""), a.get("logProbability", 0.0)) for a in alternatives]
        out.append(token_logprob(chosen.get("token", ""), chosen.get("logProbability", 0.0), top))
    return out


def candidate_samples(data: dict[str, Any]) -> list[Sample]:
    """Every candidate of a reply (``candidateCount`` > 1) as a :class:`Sample`, in ``index`` order."""
    samples = []
    for candidate in sorted(data.get("candidates") or [], key=lambda c: c.get("index", 0)):
        parts = (candidate.get("content") or {}).get("parts") or []
        samples.append(
            Sample(
                text="".join(p.get("text", "") for p in parts if not p.get("thought")),
                finish_reason=FinishReason.parse(candidate.get("finishReason")),
                logprobs=candidate_logprobs(candidate),
            )
        )
    return samples


def gemini_body(
    conversation: Conversation, generation: GenerationParams, model_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The ``GenerateContentRequest`` for ``conversation`` (also what Vertex AI's batch prediction takes)."""
    system, contents = build_contents(conversation)
    body: dict[str, Any] = {"contents": contents, "generationConfig": generation_config(generation)}
    if system is not None:
        body["systemInstruction"] = system
    thinking = model_kwargs.get("thinking_config")
    if thinking is not None:  # Gemini's thinkingConfig (e.g. {"includeThoughts": true}), passed as given
        body["generationConfig"]["thinkingConfig"] = thinking
    body.update(tool_fields(conversation, generation))
    return body


def gemini_reply(conversation: Conversation, data: Any, generation: GenerationParams) -> Conversation:
    """``conversation`` answered by the ``GenerateContentResponse`` ``data``."""
    parts, metadata = parse_candidate(data)
    samples = candidate_samples(data)
    if len(samples) > 1 or (samples and samples[0].logprobs is not None):
        usage = metadata.pop("usage", None)
        return reply_with_samples(conversation, samples, metadata, usage=Usage(**usage) if usage else None)
    return reply(conversation, parts, metadata, generation)


class GoogleGeminiInferenceEngine(RemoteEngine):
    """Gemini models through the Gemini API with an API key."""

    capabilities = Capabilities(
        generation_params=frozenset(
            {"temperature", "top_p", "stop_strings", "seed", "presence_penalty", "frequency_penalty"}
        )
        | {"n", "logprobs", "top_logprobs"},
        guided_decoding=frozenset({"json", "choice"}),
        images=True,
        streaming=True,
        tools=True,
        batch_api=True,
        notes=("At most 5 stop strings.", "JSON schemas are inlined ($ref/$defs) to Gemini's schema subset."),
        max_items={"stop_strings": _MAX_STOPS},
        value_ranges={"temperature": (0.0, 2.0), "n": (1, 8)},  # candidateCount is 1-8
    )
    default_api_url = "https://generativelanguage.googleapis.com/v1beta"
    api_key_env = "GEMINI_API_KEY"
    provider = "the Gemini API"
    default_num_workers = 8

    def endpoint_url(self, api_url: str) -> str:
        model = self.model_params.model_name.removeprefix("models/")

        def build(path: str) -> str:
            if ":generateContent" in path:
                return path.replace("{model}", model)
            if not path.endswith(("/v1beta", "/v1", "/v1alpha")):
                path += "/v1beta"
            return f"{path}/models/{model}:generateContent"

        return endpoint_url(api_url, build)

    def batch_client(self) -> BatchClient:
        """Batch Mode (:mod:`infermux.engines.remote.gemini.batches`)."""
        from infermux.engines.remote.gemini.batches import GeminiBatchClient

        return GeminiBatchClient(self)

    def build_headers(self, api_key: str | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["x-goog-api-key"] = api_key
        return headers

    def build_body(self, conversation: Conversation, generation: GenerationParams) -> dict[str, Any]:
        return gemini_body(conversation, generation, self.model_params.model_kwargs)

    def build_stream_request(self, conversation: Conversation, generation: GenerationParams) -> HttpRequest:
        url = self.url.replace(":generateContent", ":streamGenerateContent")
        url += ("&" if "?" in url else "?") + "alt=sse"
        return HttpRequest.json(url, self.build_body(conversation, generation), self.headers)

    def stream_decoder(self, conversation: Conversation) -> GeminiStream:
        return GeminiStream(conversation, self.generation_params)

    def parse_reply(self, conversation: Conversation, data: Any) -> Conversation:
        return gemini_reply(conversation, data, self.generation_params)

    def error_message(self, status: int, body: bytes) -> str:
        message = default_error_message(status, body)
        try:
            details = json.loads(body)["error"].get("details") or []
        except (ValueError, KeyError, TypeError, AttributeError):
            details = []
        if any(isinstance(d, dict) and d.get("reason") == "API_KEY_INVALID" for d in details):
            message += f" Check the key in {self.api_key_env} (or remote_params.api_key)."
        return message


class GeminiStream:
    """Decoder of one streamed ``streamGenerateContent`` answer (text yielded; calls and thoughts kept)."""

    def __init__(self, conversation: Conversation, generation: GenerationParams) -> None:
        self.conversation = conversation
        self.generation = generation
        self.done = False
        self._parts: list[dict[str, Any]] = []
        self._metadata: dict[str, Any] = {"finish_reason": None, "model": None}

    def feed(self, event: SseEvent) -> str:
        data = json.loads(event.data)
        if "error" in data:
            raise RemoteError(f"the server failed mid-answer: {data['error'].get('message')}", kind="http_error")
        self._metadata["model"] = data.get("modelVersion") or self._metadata["model"]
        self._metadata.update(usage_metadata(data))
        candidates = data.get("candidates") or []
        if not candidates:
            self._metadata.update(blocked_prompt(data) or {})
            return ""
        first = candidates[0]
        reason = first.get("finishReason")
        if reason:
            self._metadata["finish_reason"] = FinishReason.parse(reason)
        parts = (first.get("content") or {}).get("parts") or []
        self._parts.extend(parts)
        return "".join(p.get("text", "") for p in parts if not p.get("thought"))

    @property
    def finished(self) -> bool:
        # Gemini has no end marker: the last chunk carries the finishReason (a blocked prompt sets one too).
        return self._metadata["finish_reason"] is not None

    def result(self) -> Conversation:
        return reply(self.conversation, self._parts, dict(self._metadata), self.generation)
