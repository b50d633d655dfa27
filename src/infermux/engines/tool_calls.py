"""Tool calling for engines that render a chat template and generate text themselves (VLLM, and the
pieces NATIVE and LLAMACPP can share).

* :func:`template_messages` / :func:`template_tools`: a conversation as the dicts Hugging Face chat
  templates (and ``vllm.LLM.chat``) expect: calls with their ``arguments`` decoded to objects, tool
  results with their ``tool_call_id``.
* :func:`forced_schema` and :func:`calls_from_forced`: with ``tool_choice: required`` or a named
  function, decoding is constrained to a JSON schema (the named function's ``parameters``; for
  ``required``, a list of ``{"name", "parameters"}`` objects, one of the tools each, as vLLM's server
  does) and the JSON read back as calls, so every call is valid JSON matching a tool's schema.
* :func:`embedded_schema`: a tool's ``parameters`` made to sit inside such a wrapper schema: its ``$defs``
  (pydantic's) move to the wrapper's root and its ``$ref``s follow them, so ``#/$defs/...`` still resolves.
  Every wrapper of every engine (here and in :mod:`~infermux.engines.local.tool_prompting`) goes through it.
* :func:`whole_calls`: a reply's calls, or none when the answer was cut (``finish_reason: length``) inside
  a call's arguments: every engine answers such a reply with ``finish_reason: length``, no calls and no
  internal call JSON as its text.
* :func:`tool_choice_problem`: why a ``tool_choice`` cannot apply to a request's tools (``serve`` answers
  400; in a job, a row whose tools lack the named function fails before anything is sent or generated).
* :func:`parse_hermes`: calls written in the Hermes ``<tool_call>{"name", "arguments"}</tool_call>``
  markup, for engines without a parser library.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from infermux.configs.generation_params import GenerationParams
from infermux.types import Conversation, FinishReason, FunctionCall, Message, Tool, ToolCall

__all__ = [
    "calls_from_forced",
    "embedded_schema",
    "forced_schema",
    "new_call_id",
    "parse_hermes",
    "template_messages",
    "template_tools",
    "tool_choice_problem",
    "tools_key",
    "whole_calls",
]


def new_call_id() -> str:
    """A fresh id for a call a local model made (OpenAI's ``call_`` prefix)."""
    return "call_" + uuid.uuid4().hex[:24]


def _arguments_object(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments  # invalid JSON from an earlier turn: the template gets the text as written


def template_messages(conversation: Conversation) -> list[dict[str, Any]]:
    """The conversation's messages for a chat template (text content; images are not rendered here)."""
    out: list[dict[str, Any]] = []
    for message in conversation.messages:
        item: dict[str, Any] = {"role": message.role.value, "content": message.text}
        if message.tool_calls:
            item["tool_calls"] = [
                {
                    "id": call.id or new_call_id(),
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": _arguments_object(call.function.arguments)},
                }
                for call in message.tool_calls
            ]
        if message.tool_call_id is not None:
            item["tool_call_id"] = message.tool_call_id
        out.append(item)
    return out


def template_tools(conversation: Conversation) -> list[dict[str, Any]] | None:
    """The conversation's tools as chat templates read them (OpenAI's shape)."""
    if not conversation.tools:
        return None
    return [tool.to_json_dict() for tool in conversation.tools]


def tools_key(conversation: Conversation) -> str:
    """Equal for conversations that offer the same tools (engines that take one tool list per call group
    rows by it)."""
    return json.dumps(template_tools(conversation), sort_keys=True)


def tool_choice_problem(tools: list[Tool] | None, generation: GenerationParams) -> str | None:
    """Why ``generation.tool_choice`` cannot apply to a request offering ``tools``, or None: a forced call
    (``required`` or a named function) needs tools, and a named function must be one of them. (A job's
    ``tool_choice`` applies to the rows that offer tools: the engines call this only for those.)"""
    forced = generation.forced_tool
    if forced is None and generation.tool_choice != "required":
        return None
    if not tools:
        shown = f"names the function {forced!r}" if forced is not None else "is 'required'"
        return f"tool_choice {shown}, but no tools are offered: give the tools, or leave tool_choice out."
    names = [tool.name for tool in tools]
    if forced is not None and forced not in names:
        return f"tool_choice names the function {forced!r}, which is not among the tools ({', '.join(names)})."
    return None


def whole_calls(calls: list[ToolCall] | None, finish_reason: Any) -> list[ToolCall] | None:
    """``calls``, unless the answer was cut by the token limit (``finish_reason`` length) and one of them
    has arguments that are not complete JSON: then None (a half call cannot be run)."""
    if not calls or FinishReason.parse(finish_reason) is not FinishReason.LENGTH:
        return calls
    try:
        for call in calls:
            json.loads(call.function.arguments)
    except ValueError:
        return None
    return calls


_DEFS = ("$defs", "definitions")


def embedded_schema(schema: dict[str, Any], prefix: str, defs: dict[str, Any]) -> dict[str, Any]:
    """``schema`` ready to be nested inside a wrapper schema whose ``$defs`` is ``defs``: its own
    ``$defs``/``definitions`` are added to ``defs`` as ``prefix + name``, and its local references
    (``#/$defs/X``, ``#/definitions/X``, and ``#``, the schema itself) rewritten to point there."""
    own = {name: value for key in _DEFS for name, value in (schema.get(key) or {}).items()}
    whole = f"{prefix}self" if prefix else "self"

    def rewrite(node: Any) -> Any:
        if isinstance(node, list):
            return [rewrite(item) for item in node]
        if not isinstance(node, dict):
            return node
        out = {key: rewrite(value) for key, value in node.items()}
        ref = out.get("$ref")
        if ref == "#":
            out["$ref"] = f"#/$defs/{whole}"
            if whole not in defs:
                defs[whole] = {}  # filled below (the schema refers to itself)
        elif isinstance(ref, str):
            for key in _DEFS:
                if ref.startswith(f"#/{key}/"):
                    out["$ref"] = f"#/$defs/{prefix}{ref[len(key) + 3 :]}"
        return out

    body = rewrite({key: value for key, value in schema.items() if key not in _DEFS})
    for name, value in own.items():
        defs[prefix + name] = rewrite(value)
    if whole in defs and not defs[whole]:
        defs[whole] = body
    return body


def _parameters(tool: Tool) -> dict[str, Any]:
    return tool.function.parameters or {"type": "object", "properties": {}}


def forced_schema(tools: list[Tool] | None, generation: GenerationParams) -> dict[str, Any] | None:
    """The JSON schema that forces a call, for ``tool_choice`` ``required`` or a named function; None
    when the model chooses freely. Raises ``ValueError`` when the named function is not among ``tools``."""
    if not tools:
        return None
    forced = generation.forced_tool
    if forced is not None:
        for tool in tools:
            if tool.name == forced:
                return _parameters(tool)
        raise ValueError(f"tool_choice names {forced!r}, which is not among this conversation's tools")
    if generation.tool_choice != "required":
        return None
    defs: dict[str, Any] = {}
    one_of = [
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "enum": [tool.name]},
                "parameters": embedded_schema(_parameters(tool), f"t{n}_", defs),
            },
            "required": ["name", "parameters"],
        }
        for n, tool in enumerate(tools)
    ]
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": one_of}}
    if not generation.parallel_tool_calls:
        schema["maxItems"] = 1
    if defs:
        schema["$defs"] = defs
    return schema


def calls_from_forced(text: str, generation: GenerationParams) -> list[ToolCall]:
    """The calls in ``text``, generated under :func:`forced_schema`; raises ``ValueError`` when the text
    is not that JSON (a generation cut short by ``max_new_tokens``)."""
    data = json.loads(text)
    forced = generation.forced_tool
    if forced is not None:
        return [ToolCall(id=new_call_id(), function=FunctionCall(name=forced, arguments=data))]
    if not isinstance(data, list):
        raise ValueError("expected a JSON list of calls")
    return [
        ToolCall(id=new_call_id(), function=FunctionCall(name=item["name"], arguments=item.get("parameters", {})))
        for item in data
    ]


_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def parse_hermes(text: str) -> tuple[str | None, list[ToolCall] | None]:
    """(text before the calls, calls) from Hermes markup; ``(text, None)`` when there is no valid call."""
    start = text.find("<tool_call>")
    if start < 0:
        return text, None
    calls: list[ToolCall] = []
    for body in _HERMES.findall(text[start:]):
        try:
            data = json.loads(body)
            calls.append(
                ToolCall(
                    id=new_call_id(), function=FunctionCall(name=data["name"], arguments=data.get("arguments", {}))
                )
            )
        except (ValueError, KeyError, TypeError):
            return text, None  # malformed markup stays text rather than becoming a half-call
    return (text[:start].strip() or None), calls or None


class CallPairing:
    """Which call each tool result answers, walking a conversation in order (Anthropic, Bedrock and Gemini
    require every result to name its call): its ``tool_call_id``, else the earliest call of the last
    assistant turn not answered yet. Calls without an id get ``<prefix>_<message index>_<n>``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.pending: list[str] = []

    def calls(self, message: Message, index: int) -> list[str]:
        """The ids of ``message``'s tool calls (message ``index`` of the conversation), now unanswered."""
        self.pending = [c.id or f"{self.prefix}_{index}_{n}" for n, c in enumerate(message.tool_calls or [])]
        return self.pending

    def answer(self, message: Message) -> str | None:
        """The id of the call the tool result ``message`` answers (None when there is none)."""
        call_id = message.tool_call_id or (self.pending[0] if self.pending else None)
        self.pending = [p for p in self.pending if p != call_id]
        return call_id
