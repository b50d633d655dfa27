"""Reading tool calls out of a local vLLM answer with vLLM's own parsers (``model.tool_call_parser``:
``hermes``, ``llama3_json``, ``mistral``, ...), the ones ``vllm serve --tool-call-parser`` uses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from infermux.engines.tool_calls import new_call_id, template_tools
from infermux.errors import ConfigError
from infermux.types import Conversation, FunctionCall, ToolCall

__all__ = ["ParseCalls", "vllm_tool_parser"]

#: (answer text, conversation) → (text left, calls or None)
ParseCalls = Callable[[str, Conversation], tuple[str | None, list[ToolCall] | None]]


def vllm_tool_parser(name: str | None, llm: Any) -> ParseCalls | None:
    """The parser ``name`` of vLLM's registry for the model of ``llm`` (a ``vllm.LLM``), or None without
    a name. An unknown name is a :class:`ConfigError` listing the known ones."""
    if not name:
        return None
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.tool_parsers import ToolParserManager

    try:
        parser_class = ToolParserManager.get_tool_parser(name)
    except KeyError:
        known = ", ".join(sorted({*ToolParserManager.tool_parsers, *ToolParserManager.lazy_parsers}))
        raise ConfigError(f"model.tool_call_parser {name!r} is not one of vLLM's tool parsers: {known}.") from None
    tokenizer = llm.get_tokenizer()

    def parse(text: str, conversation: Conversation) -> tuple[str | None, list[ToolCall] | None]:
        request = ChatCompletionRequest.model_validate(
            {"messages": [], "model": "infermux", "tools": template_tools(conversation), "tool_choice": "auto"}
        )
        parser: Any = parser_class(tokenizer, tools=request.tools)  # type: ignore[arg-type]
        info = parser.extract_tool_calls(text, request)
        if not info.tools_called or not info.tool_calls:
            return text, None
        calls = []
        for call in info.tool_calls:
            function = FunctionCall(name=call.function.name, arguments=call.function.arguments)
            calls.append(ToolCall(id=call.id or new_call_id(), function=function))
        return info.content, calls

    return parse
