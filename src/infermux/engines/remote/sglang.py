"""SGLANG: SGLang's native ``POST /generate`` API.

The native API takes a finished prompt, so the conversation is rendered here with the model's chat
template (tokenizer from ``model.tokenizer_name`` or ``model.model_name``, local files only;
``model.chat_template``, a built-in name or a template, overrides it). Generation settings go to ``sampling_params``
(max_new_tokens, temperature, top_p, min_p, penalties, stop, stop_token_ids, skip_special_tokens)
with guided decoding as SGLang's ``json_schema`` (a JSON string), ``regex``, or a choice compiled to
a regex. Images travel in ``image_data`` (base64 or URL). ``api_key``, when given, is sent as a Bearer
token (SGLang's ``--api-key``).
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

from infermux.configs.generation_params import GenerationParams
from infermux.configs.model_params import ModelParams
from infermux.engines.capabilities import Capabilities
from infermux.engines.remote.base import RemoteEngine
from infermux.engines.remote.http.sse import SseEvent
from infermux.engines.remote.http.transport import HttpRequest, default_error_message
from infermux.engines.remote.http.urls import append_path, endpoint_url
from infermux.engines.remote.media import image_payload
from infermux.errors import ModelNotFoundError, RemoteError
from infermux.templates import resolve_chat_template
from infermux.types import Conversation, FinishReason, Usage

__all__ = ["SGLangInferenceEngine", "choice_regex", "sampling_params"]


def choice_regex(choices: list[str]) -> str:
    """A regex matching exactly one of ``choices``."""
    return "(" + "|".join(re.escape(c) for c in choices) + ")"


def sampling_params(generation: GenerationParams) -> dict[str, Any]:
    """SGLang ``sampling_params`` for ``generation``."""
    g = generation
    params: dict[str, Any] = {"max_new_tokens": g.max_new_tokens, "temperature": g.temperature, "top_p": g.top_p}
    for name, value, neutral in (
        ("min_p", g.min_p, 0.0),
        ("frequency_penalty", g.frequency_penalty, 0.0),
        ("presence_penalty", g.presence_penalty, 0.0),
        ("stop", g.stop_strings, None),
        ("stop_token_ids", g.stop_token_ids, None),
        ("skip_special_tokens", g.skip_special_tokens, True),
    ):
        if value != neutral:
            params[name] = value
    guided = g.guided_decoding
    if guided is not None:
        if guided.kind == "json":
            params["json_schema"] = json.dumps(guided.schema_dict())
        elif guided.kind == "regex":
            params["regex"] = guided.regex
        else:
            params["regex"] = choice_regex(list(guided.choice or []))
    return params


def _load_tokenizer(model: ModelParams) -> Any:
    from infermux.models.default import hf_folder, is_default_model

    name = model.tokenizer_name or model.model_name
    source = str(hf_folder()) if is_default_model(name) else name
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True, **model.tokenizer_kwargs)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"SGLANG renders prompts locally and needs the tokenizer of {name!r}, which is not available "
            f"offline ({exc}). Set model.tokenizer_name to a local folder that has the tokenizer files."
        ) from None
    return tokenizer


class SGLangInferenceEngine(RemoteEngine):
    """A model served by SGLang, through its native ``/generate`` endpoint."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        generation_params=frozenset(
            {"temperature", "top_p", "min_p", "frequency_penalty", "presence_penalty", "stop_strings"}
            | {"stop_token_ids", "skip_special_tokens"}
        ),
        guided_decoding=frozenset({"json", "regex", "choice"}),
        images=True,
        streaming=True,
        notes=("Prompts are rendered with the model's chat template from local tokenizer files.",),
    )
    default_api_url = None
    api_key_env = None
    requires_api_key = False
    default_num_workers = 16
    provider = "the SGLang server"

    def __init__(self, *args: Any, tokenizer: Any = None, **kwargs: Any) -> None:
        self.tokenizer = tokenizer  # tests hand in a tokenizer; otherwise loaded in setup()
        super().__init__(*args, **kwargs)

    def setup(self) -> None:
        super().setup()
        if self.tokenizer is None:
            self.tokenizer = _load_tokenizer(self.model_params)
        # model.chat_template (a built-in name, a template or a file) wins over the tokenizer's own.
        self.chat_template = resolve_chat_template(self.model_params.chat_template)
        if self.chat_template is None and not getattr(self.tokenizer, "chat_template", None):
            name = self.model_params.tokenizer_name or self.model_params.model_name
            raise ModelNotFoundError(
                f"the tokenizer of {name!r} has no chat template; set model.chat_template to a built-in "
                "template name (e.g. chat_ml), a Jinja template, or the path of one."
            )

    def endpoint_url(self, api_url: str) -> str:
        # An OpenAI-style base URL (.../v1): the native API lives at the root.
        return endpoint_url(api_url, lambda path: append_path("/generate")(path.removesuffix("/v1")))

    def render_prompt(self, conversation: Conversation) -> tuple[str, list[str]]:
        """The chat-templated prompt and the images (base64 strings or URLs) in order."""
        messages: list[dict[str, Any]] = []
        images: list[str] = []
        for message in conversation.messages:
            if not message.images:
                messages.append({"role": message.role.value, "content": message.text})
                continue
            parts: list[dict[str, Any]] = []
            for item in message.content if isinstance(message.content, list) else []:
                if item.is_image():
                    image = image_payload(item)
                    images.append(image.base64 if image.data is not None else str(image.url))
                    parts.append({"type": "image"})
                else:
                    parts.append({"type": "text", "text": item.content or ""})
            messages.append({"role": message.role.value, "content": parts})
        try:
            prompt = self._apply_template(messages)
        except Exception:  # a text-only template cannot render image parts: send their text, images aside
            if not images:
                raise
            flat = [{"role": m.role.value, "content": m.text} for m in conversation.messages]
            prompt = self._apply_template(flat)
        return str(prompt), images

    def _apply_template(self, messages: list[dict[str, Any]]) -> str:
        return str(
            self.tokenizer.apply_chat_template(
                messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=True
            )
        )

    def build_body(self, conversation: Conversation, generation: GenerationParams) -> dict[str, Any]:
        prompt, images = self.render_prompt(conversation)
        body: dict[str, Any] = {"text": prompt, "sampling_params": sampling_params(generation)}
        if images:
            body["image_data"] = images
        return body

    def build_stream_request(self, conversation: Conversation, generation: GenerationParams) -> HttpRequest:
        return HttpRequest.json(self.url, {**self.build_body(conversation, generation), "stream": True}, self.headers)

    def stream_decoder(self, conversation: Conversation) -> SGLangStream:
        return SGLangStream(conversation)

    def error_message(self, status: int, body: bytes) -> str:
        message = default_error_message(status, body)
        if status in (401, 403):
            message += (
                ". The server was started with --api-key: set remote_params.api_key or "
                "remote_params.api_key_env_varname to the same key."
            )
        return message

    def parse_reply(self, conversation: Conversation, data: Any) -> Conversation:
        text = data["text"]
        if not isinstance(text, str):
            raise TypeError(f"'text' is {type(text).__name__}, expected a string")
        return _answer(conversation, text, data.get("meta_info") or {})


class SGLangStream:
    """Decoder of one streamed SGLang ``/generate`` answer (cumulative text in every event)."""

    def __init__(self, conversation: Conversation) -> None:
        self.conversation = conversation
        self.done = False
        self._text = ""
        self._meta: dict[str, Any] = {}

    def feed(self, event: SseEvent) -> str:
        if event.data.strip() == "[DONE]":
            self.done = True
            return ""
        data = json.loads(event.data)
        if "error" in data:
            error = data["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise RemoteError(f"the server failed mid-answer: {message}", kind="http_error")
        text = str(data["text"])
        delta = text[len(self._text) :] if text.startswith(self._text) else text
        self._text = text
        self._meta = data.get("meta_info") or self._meta
        return delta

    @property
    def finished(self) -> bool:
        return self.done or bool(self._meta.get("finish_reason"))

    def result(self) -> Conversation:
        return _answer(self.conversation, self._text, self._meta)


#: SGLang's finish-reason classes, as older servers wrote them (``str(reason)``: ``FINISH_LENGTH(length=8)``)
_FINISH_CLASSES = (("FINISH_LENGTH", "length"), ("FINISH_MATCHED", "stop"), ("FINISHED_MATCHED", "stop"),
                   ("FINISH_ABORT", "abort"))  # fmt: skip


def finish_reason(meta: dict[str, Any]) -> FinishReason | None:
    """The finish reason in ``meta_info``: ``{"type": "stop"|"length"|"abort", ...}`` (current servers),
    a class name (``FINISH_MATCHED_TOKEN``, older ones) or a plain spelling; None while still running."""
    raw = meta.get("finish_reason")
    if isinstance(raw, str):
        for prefix, reason in _FINISH_CLASSES:
            if raw.strip().upper().startswith(prefix):
                raw = reason
                break
    return FinishReason.parse(raw)


def parse_usage(meta: dict[str, Any]) -> Usage | None:
    """Usage from ``meta_info``; None when the server reports no counts (unknown, never zeros)."""
    prompt, completion = meta.get("prompt_tokens"), meta.get("completion_tokens")
    if prompt is None and completion is None:
        return None
    return Usage.of(prompt, completion, cached_tokens=meta.get("cached_tokens"))


def _answer(conversation: Conversation, text: str, meta: dict[str, Any]) -> Conversation:
    """``conversation`` answered with ``text``; usage and finish reason from SGLang's ``meta_info``."""
    return conversation.with_reply(text, usage=parse_usage(meta), finish_reason=finish_reason(meta))
