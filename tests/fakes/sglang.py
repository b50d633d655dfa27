"""Fake of SGLang's native ``/generate`` endpoint.

Written from SGLang's "Sampling Parameters" and "Native APIs" documentation:

* ``POST /generate`` with a ``GenerateReqInput`` JSON body: ``text`` (the already-templated
  prompt), ``image_data`` (file name, URL or base64 string, one or a list), ``sampling_params``
  and optional fields such as ``rid``, ``stream``, ``return_logprob``, ``lora_path``.
* ``sampling_params`` are SGLang's ``SamplingParams``: ``max_new_tokens``, ``stop``,
  ``stop_token_ids``, ``temperature``, ``top_p``, ``top_k``, ``min_p``, penalties,
  ``min_new_tokens``, ``n``, ``ignore_eos``, ``skip_special_tokens``, and at most one of the
  constraints ``json_schema`` (a JSON *string*), ``regex``, ``ebnf``. An unknown name makes
  the server answer 400 ``{"error": {"message": ...}}``.
* Reply: ``{"text", "meta_info": {"id", "finish_reason": {"type": "stop"|"length", ...},
  "prompt_tokens", "completion_tokens", "cached_tokens"}}``.
* ``"stream": true``: ``data:`` events each holding the text so far and its ``meta_info``, then
  ``data: [DONE]``.
* With ``--api-key`` the server wants ``Authorization: Bearer <key>`` and answers 401
  ``{"error": "Unauthorized"}`` otherwise.

The prompt is parsed back from the ChatML template (``<|im_start|>role ... <|im_end|>``)
the default model uses, or from Llama 3's headers (``<|start_header_id|>role<|end_header_id|>``), so
the fake also checks the client applied a chat template with a generation prompt.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from ._server import (
    Exchange,
    FakeServer,
    Handler,
    RequestInvalid,
    Responder,
    apply_stops,
    check_keys,
    check_range,
    check_type,
    default_responder,
    truncate_words,
)

_REQUEST_FIELDS = {
    "text",
    "input_ids",
    "input_embeds",
    "image_data",
    "audio_data",
    "video_data",
    "sampling_params",
    "rid",
    "return_logprob",
    "logprob_start_len",
    "top_logprobs_num",
    "token_ids_logprob",
    "return_text_in_logprobs",
    "stream",
    "lora_path",
    "custom_logit_processor",
    "return_hidden_states",
    "modalities",
}
_SAMPLING_FIELDS = {
    "max_new_tokens",
    "stop",
    "stop_token_ids",
    "stop_regex",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
    "min_new_tokens",
    "n",
    "json_schema",
    "regex",
    "ebnf",
    "structural_tag",
    "ignore_eos",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "no_stop_trim",
    "custom_params",
    "stream_interval",
    "logit_bias",
    "sampling_seed",
}
_CHATML_TURN = re.compile(r"<\|im_start\|>(\w+)\n(.*?)<\|im_end\|>\n?", re.S)
_LLAMA3_TURN = re.compile(r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>", re.S)
# The generation prompt each known prompt format ends with, and how its turns are marked.
_FORMATS = (
    ("<|im_start|>assistant\n", _CHATML_TURN),
    ("<|start_header_id|>assistant<|end_header_id|>\n\n", _LLAMA3_TURN),
)
_LITERAL_CHOICE = re.compile(r"^\^?\(\?:?(.*)\)\$?$|^\^?\((.*)\)\$?$", re.S)


class FakeSGLang(FakeServer):
    def __init__(self, api_key: str | None = None, responder: Responder = default_responder, report_usage: bool = True):
        super().__init__()
        self.api_key = api_key
        self.responder = responder
        self.report_usage = report_usage  # False: meta_info without token counts (absent, not zero)

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", "/generate", self._generate),
            ("GET", "/health", self._health),
            ("GET", "/get_model_info", self._model_info),
        ]

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _model_info(self, request: web.Request) -> web.Response:
        return web.json_response({"model_path": "fake-model", "is_generation": True})

    async def _generate(self, request: web.Request) -> web.Response:
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": "Unauthorized"}, status=401)
        try:
            body = json.loads(await request.read())
            exchange, params = self._validate(body)
        except ValueError as exc:
            return web.json_response({"error": {"message": f"Invalid request body: {exc}"}}, status=400)
        except RequestInvalid as exc:
            return web.json_response({"error": {"message": str(exc)}}, status=exc.status)
        text = self._constrained(params) or self.responder(exchange)
        text, matched = apply_stops(text, _as_list(params.get("stop")))
        text, truncated = truncate_words(text, params.get("max_new_tokens", 128))
        if truncated and matched is None:
            finish: dict[str, Any] = {"type": "length", "length": params.get("max_new_tokens", 128)}
        else:
            finish = {"type": "stop", "matched": matched if matched is not None else 2}
        prompt_tokens = len(body["text"].split())
        if body.get("stream"):
            return await self._stream(request, body, text, finish, prompt_tokens)
        meta = {"id": body.get("rid") or f"sgl-{len(self.requests)}", "finish_reason": finish,
                "prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()), "cached_tokens": 0}  # fmt: skip
        return web.json_response({"text": text, "meta_info": self._counts(meta)})

    def _counts(self, meta: dict[str, Any]) -> dict[str, Any]:
        if self.report_usage:
            return meta
        return {k: v for k, v in meta.items() if k not in ("prompt_tokens", "completion_tokens", "cached_tokens")}

    async def _stream(
        self, request: web.Request, body: dict, text: str, finish: dict, prompt_tokens: int
    ) -> web.StreamResponse:
        """SGLang's stream: every event carries the text so far; ``data: [DONE]`` ends it."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        pieces = [p for p in re.split(r"(?<= )", text) if p] or [""]
        so_far = ""
        for i, piece in enumerate(pieces):
            so_far += piece
            meta = {"id": body.get("rid") or f"sgl-{len(self.requests)}", "prompt_tokens": prompt_tokens,
                    "completion_tokens": len(so_far.split()), "cached_tokens": 0,
                    "finish_reason": finish if i == len(pieces) - 1 else None}  # fmt: skip
            await response.write(
                b"data: " + json.dumps({"text": so_far, "meta_info": self._counts(meta)}).encode() + b"\n\n"
            )
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def _validate(self, body: Any) -> tuple[Exchange, dict]:
        check_keys(body, "GenerateReqInput", _REQUEST_FIELDS)
        if "text" not in body:
            raise RequestInvalid("Either text, input_ids or input_embeds should be provided.")
        prompt = check_type(body["text"], "text", str)
        params = check_keys(body.get("sampling_params", {}), "sampling_params", _SAMPLING_FIELDS)
        for name, lo, hi in (
            ("temperature", 0.0, None),
            ("top_p", 0.0, 1.0),
            ("min_p", 0.0, 1.0),
            ("frequency_penalty", -2.0, 2.0),
            ("presence_penalty", -2.0, 2.0),
        ):
            if name in params:
                check_range(params[name], f"sampling_params.{name}", lo, hi)
        if "max_new_tokens" in params:
            check_type(params["max_new_tokens"], "sampling_params.max_new_tokens", int)
        constraints = [k for k in ("json_schema", "regex", "ebnf") if params.get(k) is not None]
        if len(constraints) > 1:
            raise RequestInvalid("Only one of regex, json_schema, or ebnf can be set.")
        if "json_schema" in params:
            check_type(params["json_schema"], "sampling_params.json_schema", str)
            json.loads(params["json_schema"])
        if "regex" in params:
            try:
                re.compile(check_type(params["regex"], "sampling_params.regex", str))
            except re.error as exc:
                raise RequestInvalid(f"Invalid regex {params['regex']!r}: {exc}") from None
        images = body.get("image_data")
        n_images = 0
        if images is not None:
            items = images if isinstance(images, list) else [images]
            for i, item in enumerate(items):
                check_type(item, f"image_data[{i}]", str)
                if not item:
                    raise RequestInvalid(f"image_data[{i}]: empty image")
            n_images = len(items)
        return self._parse_prompt(prompt, n_images), params

    def _parse_prompt(self, prompt: str, n_images: int) -> Exchange:
        turns: list[tuple[str, str]] = []
        for generation_prompt, turn in _FORMATS:
            if prompt.rstrip(" ").endswith(generation_prompt):
                turns = [(role, text) for role, text in turn.findall(prompt)]
        if not turns:
            raise RequestInvalid("prompt is not a chat-templated conversation ending with a generation prompt")
        system = "\n".join(t for r, t in turns if r == "system") or None
        return Exchange(system=system, turns=[t for t in turns if t[0] != "system"], images=n_images)

    def _constrained(self, params: dict) -> str | None:
        if params.get("json_schema"):
            from ._server import sample_from_schema

            return json.dumps(sample_from_schema(json.loads(params["json_schema"])))
        regex = params.get("regex")
        if regex:
            match = _LITERAL_CHOICE.match(regex)
            inner = (match.group(1) or match.group(2)) if match else regex
            first = inner.split("|")[0]
            candidate = re.sub(r"\\(.)", r"\1", first)
            if re.fullmatch(regex, candidate):
                return candidate
            raise RequestInvalid(f"this fake cannot produce text for regex {regex!r}", status=500)
        return None


def _as_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)
