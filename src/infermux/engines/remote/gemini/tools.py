"""Function calling and thoughts on the Gemini API (from Google's ``generateContent`` reference).

* Tools go out as one ``{"functionDeclarations": [{name, description, parameters}]}`` tool, each
  ``parameters`` rewritten to Gemini's schema subset like guided JSON; ``generation.tool_choice`` becomes
  ``toolConfig.functionCallingConfig.mode``: ``AUTO``, ``ANY`` (``required``; a named function adds
  ``allowedFunctionNames``) or ``NONE``. Gemini has no switch for parallel calls: with
  ``parallel_tool_calls: false`` only the answer's first call is kept.
* In the history, an assistant turn's ``tool_calls`` become ``functionCall`` parts (``name``, ``args``)
  and each ``tool`` message a ``functionResponse`` part (``name`` found from the call its
  ``tool_call_id`` answers; ``response`` the JSON object the tool returned, or ``{"result": text}``).
* Gemini gives calls no ids: each gets a stable one (``call_`` and a hash of the turn's position, the
  call's index, name and arguments), so reruns and resumes write the same ids.
* Parts marked ``thought`` become ``reasoning_content``. A ``thoughtSignature`` on a call part must go
  back with that call; it is kept in the conversation metadata under ``gemini_thought_signatures``
  (``{call id: signature}``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from infermux.configs.generation_params import GenerationParams
from infermux.engines.remote.json_schema import to_gemini_schema
from infermux.types import Conversation, FunctionCall, Message, ToolCall

__all__ = ["SIGNATURES_KEY", "call_parts", "function_response_part", "reply_parts", "tool_fields"]

SIGNATURES_KEY = "gemini_thought_signatures"


def tool_fields(conversation: Conversation, generation: GenerationParams) -> dict[str, Any]:
    """``tools`` and ``toolConfig`` for a conversation that offers tools (nothing otherwise)."""
    if not conversation.tools:
        return {}
    declarations = []
    for tool in conversation.tools:
        declaration: dict[str, Any] = {"name": tool.name}
        if tool.function.description:
            declaration["description"] = tool.function.description
        if tool.function.parameters and tool.function.parameters.get("properties"):
            declaration["parameters"] = to_gemini_schema(tool.function.parameters)
        declarations.append(declaration)
    out: dict[str, Any] = {"tools": [{"functionDeclarations": declarations}]}
    config: dict[str, Any] | None = None
    forced = generation.forced_tool
    if forced is not None:
        config = {"mode": "ANY", "allowedFunctionNames": [forced]}
    elif generation.tool_choice is not None:
        config = {"mode": {"auto": "AUTO", "required": "ANY", "none": "NONE"}[str(generation.tool_choice)]}
    if config is not None:
        out["toolConfig"] = {"functionCallingConfig": config}
    return out


def call_parts(message: Message, ids: list[str], metadata: dict[str, Any]) -> list[dict[str, Any]]:
    """The parts of an assistant turn that calls functions: its text, then one ``functionCall`` each."""
    signatures = metadata.get(SIGNATURES_KEY) or {}
    parts: list[dict[str, Any]] = [{"text": message.text}] if message.text else []
    for call, call_id in zip(message.tool_calls or [], ids, strict=True):
        try:
            args = call.function.parsed_arguments()
        except ValueError:
            raise ValueError(f"the arguments of tool call {call.function.name!r} are not valid JSON") from None
        if not isinstance(args, dict):
            raise ValueError(f"the arguments of tool call {call.function.name!r} must be a JSON object")
        part: dict[str, Any] = {"functionCall": {"name": call.function.name, "args": args}}
        if call_id in signatures:
            part["thoughtSignature"] = signatures[call_id]
        parts.append(part)
    return parts


def function_response_part(message: Message, name: str) -> dict[str, Any]:
    try:
        value = json.loads(message.text)
    except ValueError:
        value = None
    response = value if isinstance(value, dict) else {"result": message.text}
    return {"functionResponse": {"name": name, "response": response}}


def stable_call_id(position: int, index: int, name: str, args: Any) -> str:
    key = json.dumps([position, index, name, args], sort_keys=True)
    return "call_" + hashlib.sha256(key.encode()).hexdigest()[:24]


def reply_parts(
    parts: list[dict[str, Any]], conversation: Conversation, generation: GenerationParams
) -> tuple[str, list[ToolCall] | None, str | None, dict[str, Any]]:
    """(text, tool calls, reasoning, metadata update) from the answer's ``parts``."""
    text = "".join(p.get("text", "") for p in parts if not p.get("thought") and "text" in p)
    reasoning = "".join(p.get("text", "") for p in parts if p.get("thought")) or None
    calls: list[ToolCall] = []
    signatures: dict[str, str] = {}
    position = len(conversation.messages)
    for part in parts:
        if "functionCall" not in part:
            continue
        call = part["functionCall"]
        args = call.get("args") or {}
        call_id = stable_call_id(position, len(calls), call["name"], args)
        calls.append(ToolCall(id=call_id, function=FunctionCall(name=call["name"], arguments=json.dumps(args))))
        if part.get("thoughtSignature"):
            signatures[call_id] = part["thoughtSignature"]
    if not generation.parallel_tool_calls:
        calls = calls[:1]
    update: dict[str, Any] = {}
    kept = {k: v for k, v in signatures.items() if any(c.id == k for c in calls)}
    if kept:
        update[SIGNATURES_KEY] = {**(conversation.metadata.get(SIGNATURES_KEY) or {}), **kept}
    return text, calls or None, reasoning, update
