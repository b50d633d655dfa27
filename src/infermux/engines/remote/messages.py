"""One conversation as the alternating turns of a chat protocol without a system role in its turn list
(Anthropic, Gemini, Bedrock): system messages set aside, tool results paired with the calls they
answer, and consecutive turns of the same speaker merged into one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from infermux.engines.tool_calls import CallPairing
from infermux.types import Conversation, Message, Role

__all__ = ["merge_turns"]

Blocks = list[dict[str, Any]]


def merge_turns(
    conversation: Conversation,
    pairing: CallPairing,
    *,
    content: Callable[[Message], Blocks],
    calls: Callable[[Message, list[str]], Blocks],
    result: Callable[[Message, str], dict[str, Any] | None],
    assistant: str = "assistant",
    key: str = "content",
    unanswered: str = "is a tool result but no earlier assistant turn called a tool",
) -> tuple[list[str], Blocks]:
    """The system messages' texts and the turns (``{"role": ..., key: [blocks]}``) of ``conversation``.

    A user or tool message speaks as ``"user"``, an assistant message as ``assistant``. The blocks of a
    message are ``content(message)``; an assistant message with calls is ``calls(message, ids)`` (the ids
    ``pairing`` gives them), and a tool message the one block ``result(message, call_id)`` for the call it
    answers (None: it answers no call). A tool message that answers no call, or a conversation with no
    user or assistant message, is a ``ValueError``.
    """
    system: list[str] = []
    turns: Blocks = []
    for index, message in enumerate(conversation.messages):
        if message.role == Role.SYSTEM:
            system.append(message.text)
            continue
        if message.role == Role.TOOL:
            call_id = pairing.answer(message)
            block = None if call_id is None else result(message, call_id)
            if block is None:
                raise ValueError(f"message {index} {unanswered}")
            blocks = [block]
        elif message.tool_calls:
            blocks = calls(message, pairing.calls(message, index))
        else:
            blocks = content(message)
        role = assistant if message.role == Role.ASSISTANT else "user"
        if turns and turns[-1]["role"] == role:
            turns[-1][key].extend(blocks)
        else:
            turns.append({"role": role, key: blocks})
    if not turns:
        raise ValueError("the conversation has no user or assistant message to send")
    return system, turns
