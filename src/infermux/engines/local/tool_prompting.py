"""Tool calling for the engines that prompt a model and decode its text themselves (NATIVE, LLAMACPP).

* Prompt: a chat template that renders tools (its source mentions ``tools``) gets the messages with their
  ``tool_calls`` / ``tool_call_id`` and the tools, as Hugging Face templates expect. Other templates (the
  default SmolLM2's among them) get the Hermes convention written into the messages: the tools and
  the calling instructions in a system block (:data:`HERMES_SYSTEM`), earlier calls as
  ``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` in the assistant text and tool results as
  user turns wrapped in ``<tool_response>...</tool_response>``.
* ``tool_choice: required`` or a named function: decoding is constrained by :func:`forced_call_schema`
  (NATIVE through xgrammar, LLAMACPP through a GBNF grammar), so the answer is always JSON naming one of
  the tools with ``arguments`` valid against that tool's ``parameters`` schema; :func:`finish` reads it
  back as calls. Strings without a ``maxLength`` get one (:data:`MAX_STRING`) so that a small model that
  repeats itself still closes its JSON within ``max_new_tokens``.
* ``auto`` (or no choice): the answer's Hermes markup is parsed into calls (:func:`parse_hermes`); a
  call cut short (an opening ``<tool_call>`` never closed) is left out of the text, like a cut forced
  call; ``none``: tools are not offered and the answer is text.
* Streaming: :class:`StreamedText` passes on the text before the first ``<tool_call>`` and holds back the
  markup, so the deltas of a streamed answer add up to its final text, never to the calls' JSON.
"""

from __future__ import annotations

import json
from typing import Any

from infermux.configs.generation_params import GenerationParams, GuidedDecodingParams
from infermux.engines.tool_calls import embedded_schema, new_call_id, parse_hermes, template_messages, template_tools
from infermux.types import Conversation, FunctionCall, Role, Tool, ToolCall

__all__ = [
    "HERMES_SYSTEM",
    "MAX_STRING",
    "chat_inputs",
    "constrained_generation",
    "finish",
    "forced_call_schema",
    "renders_tools",
]

MAX_STRING = 64
HERMES_SYSTEM = (
    "You may call one or more functions to assist with the user query. The functions you can call are "
    "described in JSON inside <tools></tools>:\n<tools>\n{tools}\n</tools>\n"
    "To call a function, answer with a JSON object with its name and arguments inside "
    '<tool_call></tool_call> tags, one per call:\n<tool_call>\n{{"name": <function-name>, "arguments": '
    "<args-json-object>}}\n</tool_call>"
)


def renders_tools(template: str | None) -> bool:
    """Whether a chat template renders the ``tools`` it is given (its source uses them)."""
    return bool(template) and "tools" in str(template)


def _offered(conversation: Conversation, generation: GenerationParams) -> bool:
    return bool(conversation.tools) and generation.tool_choice != "none"


def chat_inputs(
    conversation: Conversation, generation: GenerationParams, template_has_tools: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages and tools to render ``conversation`` with (see the module docstring)."""
    tools = template_tools(conversation) if _offered(conversation, generation) else None
    if template_has_tools:
        return template_messages(conversation), tools
    messages: list[dict[str, Any]] = []
    for message in conversation.messages:
        if message.role == Role.TOOL:
            messages.append({"role": "user", "content": f"<tool_response>\n{message.text}\n</tool_response>"})
            continue
        text = message.text
        for call in message.tool_calls or []:
            body = {"name": call.function.name, "arguments": _arguments(call)}
            text += ("\n" if text else "") + f"<tool_call>\n{json.dumps(body, ensure_ascii=False)}\n</tool_call>"
        messages.append({"role": message.role.value, "content": text})
    if tools:
        block = HERMES_SYSTEM.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
        if messages and messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": messages[0]["content"] + "\n\n" + block}
        else:
            messages.insert(0, {"role": "system", "content": block})
    return messages, None


def _arguments(call: ToolCall) -> Any:
    try:
        return call.function.parsed_arguments()
    except ValueError:
        return call.function.arguments


def _bounded(schema: Any) -> Any:
    """``schema`` with every string that has no ``maxLength`` given one (:data:`MAX_STRING`)."""
    if isinstance(schema, list):
        return [_bounded(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _bounded(value) for key, value in schema.items()}
    kind = out.get("type")
    if (kind == "string" or (isinstance(kind, list) and "string" in kind)) and "enum" not in out:
        out.setdefault("maxLength", MAX_STRING)
    return out


def _call_schema(tool: Tool, prefix: str, defs: dict[str, Any]) -> dict[str, Any]:
    parameters = embedded_schema(tool.function.parameters or {"type": "object", "properties": {}}, prefix, defs)
    return {
        "type": "object",
        "properties": {"name": {"type": "string", "enum": [tool.name]}, "arguments": parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def forced_call_schema(tools: list[Tool] | None, generation: GenerationParams) -> dict[str, Any] | None:
    """The JSON schema a forced answer follows: for a named function, one ``{"name", "arguments"}`` object
    for it; for ``required``, a list of one to ``len(tools)`` such objects, each one of the tools (a single
    object with ``parallel_tool_calls: false``). None when the model chooses freely. Raises ``ValueError`` when the
    named function is not among ``tools``."""
    if not tools:
        return None
    forced = generation.forced_tool
    defs: dict[str, Any] = {}
    if forced is not None:
        named = [tool for tool in tools if tool.name == forced]
        if not named:
            raise ValueError(f"tool_choice names {forced!r}, which is not among this conversation's tools")
        schema = _call_schema(named[0], "", defs)
    elif generation.tool_choice != "required":
        return None
    else:
        calls = [_call_schema(tool, f"t{n}_" if len(tools) > 1 else "", defs) for n, tool in enumerate(tools)]
        schema = {"anyOf": calls} if len(calls) > 1 else calls[0]
        if generation.parallel_tool_calls:
            schema = {"type": "array", "minItems": 1, "maxItems": len(tools), "items": schema}
    if defs:  # the tools' definitions, where their references (rewritten) point: the wrapper's root
        schema = {**schema, "$defs": defs}
    return _bounded(schema)  # type: ignore[no-any-return]


def constrained_generation(conversation: Conversation, generation: GenerationParams) -> GenerationParams:
    """``generation`` with the forced-call schema as its guided decoding when this conversation's
    ``tool_choice`` forces a call; ``generation`` itself otherwise."""
    if not _offered(conversation, generation):
        return generation
    schema = forced_call_schema(conversation.tools, generation)
    if schema is None:
        return generation
    return generation.model_copy(update={"guided_decoding": GuidedDecodingParams(json=schema)})


def finish(
    text: str, conversation: Conversation, generation: GenerationParams
) -> tuple[str | None, list[ToolCall] | None]:
    """(answer text, calls) from the generated ``text``. A forced answer cut short by ``max_new_tokens``
    (not valid JSON) is neither: no text (the call JSON is internal) and no calls; its finish reason,
    ``length``, says it was cut."""
    if not _offered(conversation, generation):
        return text, None
    if forced_call_schema(conversation.tools, generation) is not None:
        try:
            data = json.loads(text)
        except ValueError:
            return None, None
        items = data if isinstance(data, list) else [data]
        calls = [
            ToolCall(id=new_call_id(), function=FunctionCall(name=item["name"], arguments=item["arguments"]))
            for item in items
        ]
        return None, calls
    before, parsed = parse_hermes(text)
    if parsed and not generation.parallel_tool_calls:
        parsed = parsed[:1]
    if parsed:
        return before, parsed
    last = text.rfind("<tool_call>")
    if last >= 0 and "</tool_call>" not in text[last:]:  # a call cut short (max_new_tokens): not content
        return text[:last].strip() or None, None
    return text, None


_OPEN = "<tool_call>"


class StreamedText:
    """The deltas a streamed answer shows when its model may write Hermes tool calls (``auto``).

    :meth:`feed` passes text on until ``<tool_call>`` starts (a tail that could be the start of the tag
    waits for the next delta); from there on the answer is markup, read into calls at the end, and
    nothing more is shown. :meth:`rest` is what the final text has beyond what was shown (the held tail,
    or markup that did not parse and so stays text). Without tools offered every delta passes as is."""

    def __init__(self, conversation: Conversation, generation: GenerationParams) -> None:
        self.active = _offered(conversation, generation)
        self.shown = ""
        self._pending = ""
        self._stopped = False

    def feed(self, delta: str) -> str:
        """The part of ``delta`` to show now ("" while held)."""
        if not self.active:  # every delta passes, and nothing is kept (rest is then "")
            return delta
        if self._stopped:
            return ""
        text = self._pending + delta
        start = text.find(_OPEN)
        if start >= 0:
            self._stopped = True
            out, self._pending = text[:start], ""
        else:
            keep = next((n for n in range(len(_OPEN) - 1, 0, -1) if text.endswith(_OPEN[:n])), 0)
            out, self._pending = text[: len(text) - keep], text[len(text) - keep :]
        self.shown += out
        return out

    def rest(self, final_text: str | None) -> str:
        """What ``final_text`` (the answer's text) adds to what was shown, when it extends it; else ""."""
        final_text = final_text or ""
        if not self.active or not final_text.startswith(self.shown):
            return ""
        out = final_text[len(self.shown) :]
        self.shown = final_text
        return out
