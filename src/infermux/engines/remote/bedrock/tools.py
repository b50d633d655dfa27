"""Tool use and reasoning on Bedrock's Converse API (from the Converse API reference).

* Tools go out as ``toolConfig: {"tools": [{"toolSpec": {name, description, inputSchema: {json}}}],
  "toolChoice": {"auto": {}} | {"any": {}} | {"tool": {"name"}}}`` (``any`` and ``tool`` are honoured by
  the models that support them, e.g. Anthropic's and Mistral Large). Converse has no ``none`` choice:
  with ``tool_choice: none`` no tools are offered unless the history holds tool blocks (Converse then
  needs ``toolConfig``; the model may still call). Converse has no parallel-call switch: with
  ``parallel_tool_calls: false`` only the answer's first call is kept.
* In the history, an assistant turn's ``tool_calls`` become ``toolUse`` blocks (``toolUseId``, ``name``,
  ``input``) and each ``tool`` message a ``toolResult`` block (``content: [{"json"}]`` when the tool
  returned a JSON object, else ``[{"text"}]``) in a user turn.
* The answer's ``toolUse`` blocks become ``Message.tool_calls``; ``reasoningContent`` blocks become
  ``reasoning_content``. Their signatures must go back with the turn that called tools, so the blocks
  are kept in the conversation metadata under ``bedrock_reasoning`` (``{first toolUseId: [blocks]}``).
"""

from __future__ import annotations

import json
from typing import Any

from infermux.configs.generation_params import GenerationParams
from infermux.types import Conversation, FunctionCall, Message, ToolCall

__all__ = ["REASONING_KEY", "reply_parts", "tool_config", "tool_result_block", "tool_use_blocks"]

REASONING_KEY = "bedrock_reasoning"


def tool_config(conversation: Conversation, generation: GenerationParams) -> dict[str, Any] | None:
    """``toolConfig`` for a conversation that offers tools, or None."""
    if not conversation.tools:
        return None
    history_uses_tools = any(m.tool_calls or m.tool_call_id for m in conversation.messages)
    if generation.tool_choice == "none" and not history_uses_tools:
        return None
    specs = []
    for tool in conversation.tools:
        spec: dict[str, Any] = {"name": tool.name}
        if tool.function.description:
            spec["description"] = tool.function.description
        spec["inputSchema"] = {"json": tool.function.parameters or {"type": "object", "properties": {}}}
        specs.append({"toolSpec": spec})
    config: dict[str, Any] = {"tools": specs}
    forced = generation.forced_tool
    if forced is not None:
        config["toolChoice"] = {"tool": {"name": forced}}
    elif generation.tool_choice == "required":
        config["toolChoice"] = {"any": {}}
    elif generation.tool_choice == "auto":
        config["toolChoice"] = {"auto": {}}
    return config


def tool_use_blocks(message: Message, ids: list[str], metadata: dict[str, Any]) -> list[dict[str, Any]]:
    """Kept reasoning blocks, the text and one ``toolUse`` block per call of an assistant turn."""
    blocks: list[dict[str, Any]] = list((metadata.get(REASONING_KEY) or {}).get(ids[0], []))
    if message.text:
        blocks.append({"text": message.text})
    for call, call_id in zip(message.tool_calls or [], ids, strict=True):
        try:
            value = call.function.parsed_arguments()
        except ValueError:
            raise ValueError(f"the arguments of tool call {call.function.name!r} are not valid JSON") from None
        blocks.append({"toolUse": {"toolUseId": call_id, "name": call.function.name, "input": value}})
    return blocks


def tool_result_block(message: Message, call_id: str) -> dict[str, Any]:
    try:
        value = json.loads(message.text)
    except ValueError:
        value = None
    content = [{"json": value}] if isinstance(value, dict) else [{"text": message.text}]
    return {"toolResult": {"toolUseId": call_id, "content": content}}


def reply_parts(
    content: list[dict[str, Any]], metadata: dict[str, Any], generation: GenerationParams
) -> tuple[str, list[ToolCall] | None, str | None, dict[str, Any]]:
    """(text, tool calls, reasoning, metadata update) from the answer's content blocks."""
    text = "".join(block["text"] for block in content if "text" in block)
    reasoning_blocks = [block for block in content if "reasoningContent" in block]
    reasoning = "".join((b["reasoningContent"].get("reasoningText") or {}).get("text", "") for b in reasoning_blocks)
    calls = [
        ToolCall(
            id=block["toolUse"]["toolUseId"],
            function=FunctionCall(name=block["toolUse"]["name"], arguments=json.dumps(block["toolUse"].get("input"))),
        )
        for block in content
        if "toolUse" in block
    ]
    if not generation.parallel_tool_calls:
        calls = calls[:1]
    update: dict[str, Any] = {}
    signed = [b for b in reasoning_blocks if "reasoningText" in b["reasoningContent"]]  # redacted bytes: not kept
    if calls and signed:
        update[REASONING_KEY] = {**(metadata.get(REASONING_KEY) or {}), str(calls[0].id): signed}
    return text, calls or None, reasoning or None, update
