"""Tool calling and extended thinking on Anthropic's Messages API (from Anthropic's API reference).

* Tools go out as ``{"name", "description", "input_schema"}``; ``generation.tool_choice`` becomes
  ``{"type": "auto" | "any" | "tool" (with ``name``) | "none"}`` and ``parallel_tool_calls: false``
  becomes ``disable_parallel_tool_use: true``.
* In the history, an assistant turn's ``tool_calls`` become ``tool_use`` blocks (``input`` is the parsed
  arguments object) and each ``tool`` message a ``tool_result`` block in a user turn (consecutive tool
  messages share one turn, results first, as the API requires).
* The answer's ``tool_use`` blocks become ``Message.tool_calls`` (arguments as a JSON string) and its
  ``thinking`` blocks ``reasoning_content``. Anthropic requires the thinking blocks of a turn that called
  tools to be sent back unchanged, signature included, with the tool results. The signature is not part
  of Oumi's message, so the blocks are kept in the conversation metadata under
  ``anthropic_thinking``: ``{first tool_use id of the turn: [thinking blocks as received]}``; they go
  back in front of that turn's ``tool_use`` blocks.
"""

from __future__ import annotations

import json
from typing import Any

from infermux.configs.generation_params import GenerationParams
from infermux.types import Conversation, FunctionCall, Message, ToolCall

__all__ = ["THINKING_KEY", "assistant_blocks", "reply_parts", "tool_fields", "tool_result_block"]

THINKING_KEY = "anthropic_thinking"


def tool_fields(conversation: Conversation, generation: GenerationParams) -> dict[str, Any]:
    """``tools`` and ``tool_choice`` for a conversation that offers tools (nothing otherwise)."""
    if not conversation.tools:
        return {}
    tools = []
    for tool in conversation.tools:
        spec: dict[str, Any] = {"name": tool.name}
        if tool.function.description:
            spec["description"] = tool.function.description
        spec["input_schema"] = tool.function.parameters or {"type": "object", "properties": {}}
        tools.append(spec)
    out: dict[str, Any] = {"tools": tools}
    choice: dict[str, Any] | None = None
    forced = generation.forced_tool
    if forced is not None:
        choice = {"type": "tool", "name": forced}
    elif generation.tool_choice == "required":
        choice = {"type": "any"}
    elif generation.tool_choice == "none":
        choice = {"type": "none"}
    elif generation.tool_choice == "auto" or not generation.parallel_tool_calls:
        choice = {"type": "auto"}
    if choice is not None:
        if not generation.parallel_tool_calls and choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
        out["tool_choice"] = choice
    return out


def _input(call: ToolCall) -> Any:
    try:
        value = call.function.parsed_arguments()
    except ValueError:
        raise ValueError(
            f"the arguments of tool call {call.function.name!r} are not valid JSON; Anthropic needs an object"
        ) from None
    if not isinstance(value, dict):
        raise ValueError(f"the arguments of tool call {call.function.name!r} must be a JSON object")
    return value


def assistant_blocks(message: Message, ids: list[str], metadata: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``thinking`` (when kept), ``text`` and ``tool_use`` blocks of an assistant turn that calls
    tools; ``ids`` are the calls' ids (given or made up)."""
    blocks: list[dict[str, Any]] = list((metadata.get(THINKING_KEY) or {}).get(ids[0], []))
    if message.text:
        blocks.append({"type": "text", "text": message.text})
    for call, call_id in zip(message.tool_calls or [], ids, strict=True):
        blocks.append({"type": "tool_use", "id": call_id, "name": call.function.name, "input": _input(call)})
    return blocks


def tool_result_block(message: Message, call_id: str) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": call_id, "content": message.text}


def reply_parts(
    blocks: list[dict[str, Any]], metadata: dict[str, Any]
) -> tuple[str, list[ToolCall] | None, str | None, dict[str, Any]]:
    """(text, tool calls, reasoning, metadata update) from an answer's content blocks."""
    text = "".join(b["text"] for b in blocks if b.get("type") == "text")
    thinking = [b for b in blocks if b.get("type") in ("thinking", "redacted_thinking")]
    reasoning = "\n\n".join(b["thinking"] for b in thinking if b.get("type") == "thinking") or None
    calls = [
        ToolCall(id=b["id"], function=FunctionCall(name=b["name"], arguments=json.dumps(b.get("input") or {})))
        for b in blocks
        if b.get("type") == "tool_use"
    ]
    update: dict[str, Any] = {}
    if calls and thinking:
        kept = dict(metadata.get(THINKING_KEY) or {})
        kept[str(calls[0].id)] = thinking
        update[THINKING_KEY] = kept
    return text, calls or None, reasoning, update
