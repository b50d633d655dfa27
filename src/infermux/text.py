"""Text that every file and terminal can take: lone UTF-16 surrogates become U+FFFD.

A server that stops inside an emoji may answer ``"\\ud83d"``: valid JSON, but half a character that no
UTF-8 file, terminal or request body can hold. A Python string holds a surrogate only when it is
unpaired (a valid pair decodes to one character), so each one found is replaced.
"""

from __future__ import annotations

import re
from typing import Any

from infermux.types import Conversation

__all__ = ["first_surrogate", "has_surrogate", "scrub_reply", "scrub_surrogates"]

_SURROGATE = re.compile("[\ud800-\udfff]")


def has_surrogate(text: str) -> bool:
    return first_surrogate(text) is not None


def first_surrogate(text: str) -> int | None:
    """The index of the first lone surrogate in ``text``, or None (ASCII text is checked in C, fast)."""
    if text.isascii():
        return None
    found = _SURROGATE.search(text)
    return found.start() if found else None


def scrub_surrogates(value: Any) -> Any:
    """``value`` (JSON data) with every lone UTF-16 surrogate replaced by U+FFFD, so it encodes as UTF-8.

    A Python string holds a surrogate only when it is unpaired (a valid pair decodes to one character).
    """
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {scrub_surrogates(k): scrub_surrogates(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_surrogates(v) for v in value]
    return value


def scrub_reply(conversation: Conversation) -> Conversation:
    """``conversation`` with lone UTF-16 surrogates in its reply (text, reasoning, tool-call arguments)
    replaced by U+FFFD (a server that stops inside an emoji may send ``"\\ud83d"``: valid JSON, but no
    UTF-8 file or terminal can take it)."""
    if not conversation.messages:
        return conversation
    last = conversation.messages[-1]
    content = last.content
    plain = not last.tool_calls and not last.reasoning_content
    if plain and isinstance(content, str) and (content.isascii() or not has_surrogate(content)):
        return conversation  # the common case, checked without a copy
    data = last.to_json_dict()
    cleaned = scrub_surrogates(data)
    if cleaned == data:
        return conversation
    fixed = type(last).model_validate(cleaned)
    return conversation.model_copy(update={"messages": [*conversation.messages[:-1], fixed]})
