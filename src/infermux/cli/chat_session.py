"""The chat's state and commands, independent of any terminal.

:class:`ChatSession` keeps the history (system prompt, turns, images waiting for the next turn) and the
generation parameters, and answers the slash commands. The terminal front end
(:mod:`infermux.cli.chat_cmd`) reads lines, asks the session what to do with each, and streams answers.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from infermux.configs.generation_params import GenerationParams
from infermux.types import ContentItem, Conversation, Message, Role, Tool, Type

__all__ = ["CHAT_PRESET", "HELP", "ChatSession", "CommandResult", "chat_preset", "image_item", "join_continuations"]

HELP = """\
Commands:
  /help              this list
  /reset             forget the conversation (system prompt and parameters are kept)
  /system [TEXT]     show, or set, the system prompt (/system - removes it)
  /image PATH|URL    attach an image to your next message
  /tool [ID] RESULT  answer the model's tool call (the oldest unanswered one, or call ID) and let it go on
  /save FILE         write the conversation to FILE as Conversation JSONL (infermux infer --input_path FILE)
  /params [K=V ...]  show, or change, generation parameters (e.g. /params temperature=0.7 max_new_tokens=64)
  /exit              leave (Ctrl-D too)
End a line with \\ to continue on the next one. Ctrl-C stops an answer. Start with // to send a literal /."""

# Parameters worth showing by default in /params (others only when changed).
_SHOWN = ("max_new_tokens", "temperature", "top_p", "seed", "stop_strings")

#: The chat's generation settings when no config is given (``infermux chat`` alone; a config keeps the
#: SPEC's defaults, greedy included): moderate sampling and a repetition guard. Greedy decoding of a small
#: model sits on near-ties and can repeat one phrase until ``max_new_tokens`` (the default model did,
#: for "What is the capital of France?"); with these settings it answered and stopped for every seed tried.
#: Each applies where the engine supports it and the user did not set it (``--generation.temperature 0``).
CHAT_PRESET: dict[str, float] = {"temperature": 0.7, "top_p": 0.9, "frequency_penalty": 0.3}
# Engines whose models take temperature or top_p, not both (recent Claude models refuse the pair).
_TEMPERATURE_OR_TOP_P = frozenset({"ANTHROPIC", "BEDROCK"})


def chat_preset(generation: GenerationParams, supported: set[str], engine_name: str) -> dict[str, float]:
    """The part of :data:`CHAT_PRESET` that applies: supported by the engine and not set by the user."""
    preset = {k: v for k, v in CHAT_PRESET.items() if k in supported and k not in generation.model_fields_set}
    if engine_name.upper() in _TEMPERATURE_OR_TOP_P and "top_p" not in generation.model_fields_set:
        preset.pop("top_p", None)
    return preset


@dataclass(frozen=True)
class CommandResult:
    """What a command printed, and whether the chat should end."""

    text: str = ""
    exit: bool = False
    error: bool = False
    ask: bool = False
    """The model should answer now (a tool result was added)."""


def image_item(ref: str) -> ContentItem:
    """A content item for an image path or URL (``http(s)://`` and ``data:`` URLs are sent as URLs)."""
    if ref.startswith(("http://", "https://", "data:")):
        return ContentItem(type=Type.IMAGE_URL, content=ref)
    return ContentItem(type=Type.IMAGE_PATH, content=str(Path(ref).expanduser()))


def _is_pdf(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(5) == b"%PDF-"
    except OSError:
        return False


def join_continuations(lines: list[str]) -> str:
    """Join lines that end with a backslash to the next one (the backslash becomes a newline)."""
    parts = []
    for line in lines:
        parts.append(line[:-1] if line.endswith("\\") else line)
    return "\n".join(parts)


class ChatSession:
    """History, pending images and parameters of one chat, plus the slash commands."""

    def __init__(
        self,
        generation: GenerationParams,
        *,
        system_prompt: str | None = None,
        images: list[str] | None = None,
        accepts_images: bool = True,
        engine_name: str = "the engine",
        model_name: str = "",
        supported_params: set[str] | None = None,
        preset: dict[str, float] | None = None,
        tools: list[Tool] | None = None,
    ) -> None:
        self.preset = dict(preset or {})
        self.generation = generation.model_copy(update=self.preset) if self.preset else generation
        self.system_prompt = system_prompt or None
        self.accepts_images = accepts_images
        self.engine_name = engine_name
        self.model_name = model_name
        self.supported_params = supported_params
        self.tools = tools or None
        self.turns: list[Message] = []
        self.pending_images: list[ContentItem] = []
        self.conversation_id = uuid.uuid4().hex[:12]
        self.notices: list[str] = []
        for ref in images or []:
            message = self.attach(ref)
            if message:
                self.notices.append(message)

    # ------------------------------------------------------------------ history
    def messages(self) -> list[Message]:
        system = [Message(role=Role.SYSTEM, content=self.system_prompt)] if self.system_prompt else []
        return [*system, *self.turns]

    def ask(self, text: str) -> Conversation:
        """Add the user's ``text`` (with pending images) and return the conversation to answer."""
        if self.pending_images:
            content: str | list[ContentItem] = [*self.pending_images, ContentItem(type=Type.TEXT, content=text)]
        else:
            content = text
        self.pending_images = []
        self.turns.append(Message(role=Role.USER, content=content))
        return self.pending()

    def pending(self) -> Conversation:
        """The conversation as it stands, to be answered (after a question or a tool result)."""
        return Conversation(conversation_id=self.conversation_id, messages=self.messages(), tools=self.tools)

    def answered(self, answer: str | Message) -> None:
        """Record the answer to the last question (its text, or the whole message with its tool calls)."""
        if isinstance(answer, str):
            answer = Message(role=Role.ASSISTANT, content=answer)
        self.turns.append(answer)

    def unanswered_calls(self) -> list[str]:
        """Ids of the last answer's tool calls that no tool message answers yet."""
        for index in range(len(self.turns) - 1, -1, -1):
            message = self.turns[index]
            if message.role == Role.ASSISTANT and message.tool_calls:
                answered = {m.tool_call_id for m in self.turns[index + 1 :] if m.role == Role.TOOL}
                return [c.id or "" for c in message.tool_calls if c.id not in answered]
            if message.role != Role.TOOL:
                return []
        return []

    def withdraw(self) -> None:
        """Forget the last question (its answer failed or was stopped before any text)."""
        if self.turns and self.turns[-1].role in (Role.USER, Role.TOOL):
            self.turns.pop()

    def conversation(self) -> Conversation | None:
        messages = self.messages()
        if not messages:
            return None
        metadata = {"engine": self.engine_name, "model": self.model_name} if self.model_name else {}
        return Conversation(
            conversation_id=self.conversation_id, messages=messages, metadata=metadata, tools=self.tools
        )

    def attach(self, ref: str) -> str | None:
        """Queue an image for the next turn; the reason it was refused, or None."""
        if not self.accepts_images:
            return f"{self.engine_name} does not accept images; {ref} is not sent."
        item = image_item(ref)
        if item.type == Type.IMAGE_PATH and not Path(str(item.content)).is_file():
            return f"no image file at {item.content}; give an existing path or an http(s) URL."
        if item.type == Type.IMAGE_PATH and _is_pdf(Path(str(item.content))):
            from infermux.engines.images import ImageError, pdf_page_items

            try:  # one image per page, sent as PNG bytes (any engine that takes images reads them)
                self.pending_images.extend(pdf_page_items(Path(str(item.content)).read_bytes(), str(item.content)))
            except (ImageError, OSError) as exc:
                return str(exc)
            return None
        self.pending_images.append(item)
        return None

    # ------------------------------------------------------------------ commands
    @staticmethod
    def is_command(line: str) -> bool:
        return line.startswith("/") and not line.startswith("//")

    @staticmethod
    def message_text(line: str) -> str:
        """The text to send for a non-command line (``//x`` sends ``/x``)."""
        return line[1:] if line.startswith("//") else line

    def run(self, line: str) -> CommandResult:
        """Run the slash command in ``line``."""
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        handler = {
            "/help": self._help,
            "/?": self._help,
            "/reset": self._reset,
            "/clear": self._reset,
            "/system": self._system,
            "/image": self._image,
            "/save": self._save,
            "/tool": self._tool,
            "/params": self._params,
            "/exit": self._exit,
            "/quit": self._exit,
        }.get(name.lower())
        if handler is None:
            return CommandResult(f"unknown command {name}; /help lists the commands.", error=True)
        return handler(arg)

    def _help(self, arg: str) -> CommandResult:
        return CommandResult(HELP)

    def _exit(self, arg: str) -> CommandResult:
        return CommandResult(exit=True)

    def _reset(self, arg: str) -> CommandResult:
        self.turns.clear()
        self.pending_images.clear()
        self.conversation_id = uuid.uuid4().hex[:12]
        return CommandResult("conversation cleared.")

    def _system(self, arg: str) -> CommandResult:
        if not arg:
            return CommandResult(f"system prompt: {self.system_prompt}" if self.system_prompt else "no system prompt.")
        self.system_prompt = None if arg == "-" else arg
        return CommandResult("system prompt removed." if arg == "-" else "system prompt set.")

    def _image(self, arg: str) -> CommandResult:
        if not arg:
            return CommandResult("usage: /image PATH|URL (a PDF: one image per page)", error=True)
        problem = self.attach(arg)
        if problem:
            return CommandResult(problem, error=True)
        return CommandResult(f"image attached to your next message ({len(self.pending_images)} waiting).")

    def _tool(self, arg: str) -> CommandResult:
        waiting = self.unanswered_calls()
        if not waiting:
            return CommandResult("no tool call is waiting for a result.", error=True)
        first, _, rest = arg.partition(" ")
        call_id, result = (first, rest.strip()) if first in waiting and rest.strip() else (waiting[0], arg)
        if not result:
            return CommandResult("usage: /tool [ID] RESULT", error=True)
        self.turns.append(Message(role=Role.TOOL, content=result, tool_call_id=call_id or None))
        left = len(waiting) - 1
        if left:
            return CommandResult(f"result recorded; {left} more call(s) wait for a result.")
        return CommandResult(ask=True)

    def _save(self, arg: str) -> CommandResult:
        if not arg:
            return CommandResult("usage: /save FILE", error=True)
        conversation = self.conversation()
        if conversation is None:
            return CommandResult("nothing to save yet.", error=True)
        path = Path(arg).expanduser()
        try:
            write_jsonl(path, [conversation])
        except OSError as exc:
            return CommandResult(f"cannot write {path}: {exc.strerror or exc}", error=True)
        return CommandResult(f"saved {len(conversation.messages)} messages to {path}")

    def _params(self, arg: str) -> CommandResult:
        if not arg:
            return CommandResult(self.describe_params())
        try:
            updates = parse_assignments(arg)
            candidate = GenerationParams.model_validate({**self.generation.model_dump(exclude_unset=True), **updates})
        except ValueError as exc:  # ValidationError is a ValueError
            return CommandResult(_explain_params(exc), error=True)
        ignored = sorted(k for k in updates if self.supported_params is not None and k not in self.supported_params)
        self.generation = candidate
        text = "set " + ", ".join(f"{k}={getattr(candidate, k)!r}" for k in updates)
        if ignored:
            text += f" ({self.engine_name} ignores {', '.join(ignored)})"
        return CommandResult(text)

    def describe_params(self) -> str:
        g = self.generation
        names = [*_SHOWN, *(n for n in sorted(g.model_fields_set) if n not in _SHOWN)]
        text = "  ".join(f"{n}={getattr(g, n)!r}" for n in names if n in GenerationParams.model_fields)
        kept = [k for k, v in self.preset.items() if getattr(g, k) == v]
        if kept:
            text += (
                f"\n(chat preset, as no config was given: {', '.join(kept)}; "
                "change with /params, e.g. /params temperature=0 for greedy answers)"
            )
        return text


def parse_assignments(text: str) -> dict[str, Any]:
    """``"temperature=0.7 stop_strings=[a, b]"`` → typed values (YAML scalars, lists and mappings)."""
    import shlex

    import yaml

    out: dict[str, Any] = {}
    for token in shlex.split(text):
        key, sep, raw = token.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"{token!r} is not KEY=VALUE (e.g. temperature=0.7)")
        if key not in GenerationParams.model_fields:
            hint = GenerationParams.suggest(key)
            raise ValueError(f"unknown parameter {key!r}" + (f"; did you mean {hint!r}?" if hint else ""))
        out[key] = yaml.safe_load(raw) if raw.strip() else None
    return out


def _explain_params(exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors()[:3]:
            loc = ".".join(str(p) for p in err["loc"])
            parts.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
        return "; ".join(parts)
    return str(exc)


def write_jsonl(path: Path, conversations: list[Conversation]) -> None:
    """Write ``conversations`` as Conversation JSONL, replacing ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for conversation in conversations:
                fh.write(json.dumps(conversation.to_json_dict(), ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())  # on disk before it replaces the old file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
