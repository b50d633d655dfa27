"""``infermux chat`` / ``infermux infer -i``: the terminal front end of :class:`ChatSession`.

Two modes, picked by whether stdin and stdout are terminals:

* **interactive**: prompt_toolkit line editing and history (kept in ``$INFERMUX_CHAT_HISTORY``, by
  default ``chat_history`` in the infermux cache folder; empty: not kept), multi-line input (a trailing
  backslash or a paste), answers streamed as they are generated (a spinner until the first text
  arrives), Ctrl-C stops the current answer and keeps the session, Ctrl-D leaves, a usage footer after
  each answer;
* **piped**: every stdin line is a turn (the history is kept), answers are printed as plain text on
  stdout, command output and errors go to stderr, and the chat ends with the input.

Without a config file, generation settings the user did not give come from the chat preset
(:data:`~infermux.cli.chat_session.CHAT_PRESET`); with one, the config's settings are used as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from infermux.cli.chat_session import ChatSession, chat_preset, join_continuations

if TYPE_CHECKING:
    from infermux.configs.generation_params import GenerationParams
    from infermux.configs.inference_config import InferenceConfig
    from infermux.engines.base import InferenceEngine
    from infermux.types import Conversation, Message, Tool

__all__ = ["Answer", "format_footer", "run_chat", "stream_answer"]

PROMPT = "you> "
_DIM, _RED, _RESET = "\x1b[2m", "\x1b[31m", "\x1b[0m"
_SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


@dataclass
class Answer:
    """One answer as it arrives: its text, timings and the engine's metadata (usage, ...)."""

    parts: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    first_at: float | None = None
    ended: float | None = None
    deltas: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    stopped: bool = False
    message: Message | None = None
    """The whole answer once it is complete (with its tool calls and reasoning)."""

    @property
    def text(self) -> str:
        return "".join(self.parts)


async def stream_answer(
    engine: InferenceEngine, conversation: Conversation, generation: GenerationParams, answer: Answer, write: Any
) -> None:
    """Stream ``engine``'s answer to ``conversation`` through ``write``, recording it in ``answer``."""
    events = engine.stream(conversation, generation)
    try:
        async for event in events:
            if event.final:
                answer.metadata = dict(event.metadata or (event.conversation.metadata if event.conversation else {}))
                final = event.conversation.messages[-1] if event.conversation else None
                final_text = final.text if final is not None else ""
                if not answer.parts and final_text:
                    _arrived(answer, final_text, write)
                answer.message = final
                if final is not None and final.tool_calls:
                    write(("\n" if answer.parts else "") + _calls_text(final))
            elif event.delta:
                _arrived(answer, event.delta, write)
    finally:
        answer.ended = time.perf_counter()
        with contextlib.suppress(Exception):
            await events.aclose()  # type: ignore[attr-defined]


def _calls_text(message: Message) -> str:
    return "\n".join(
        f"[tool call {c.id or '-'}] {c.function.name}({c.function.arguments})" for c in message.tool_calls or []
    )


def _arrived(answer: Answer, text: str, write: Any) -> None:
    if answer.first_at is None:
        answer.first_at = time.perf_counter()
    answer.deltas += 1
    answer.parts.append(text)
    write(text)


def format_footer(answer: Answer) -> str:
    """``12 tokens · 85.1 tokens/s · first token 0.09 s · 0.23 s`` (parts the engine did not report are left out)."""
    end = answer.ended or time.perf_counter()
    total = end - answer.started
    from infermux.types import Usage

    usage = Usage.from_json_dict(answer.metadata.get("usage"))
    tokens = usage.completion_tokens if usage is not None else None
    streamed = answer.deltas > 1 and answer.first_at is not None
    parts = []
    if isinstance(tokens, int) and tokens > 0:
        parts.append(f"{tokens} tokens")
        if streamed and tokens > 1 and answer.first_at is not None and end > answer.first_at:
            parts.append(f"{(tokens - 1) / (end - answer.first_at):.1f} tokens/s")
        elif total > 0:
            parts.append(f"{tokens / total:.1f} tokens/s")
    if streamed and answer.first_at is not None:
        parts.append(f"first token {answer.first_at - answer.started:.2f} s")
    parts.append(f"{total:.2f} s")
    return " · ".join(parts)


# ---------------------------------------------------------------------- entry point


def run_chat(
    cfg: InferenceConfig,
    *,
    system_prompt: str | None,
    images: list[str],
    preset: bool = False,
    tools: list[Tool] | None = None,
) -> None:
    """Chat with the engine ``cfg`` selects, interactively on a terminal, line by line otherwise.

    ``preset``: no config file was given, so generation settings the user did not set come from
    :data:`~infermux.cli.chat_session.CHAT_PRESET`. ``tools`` are offered to the model on every turn.
    """
    from infermux.engines.registry import build_engine

    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    if interactive:
        sys.stderr.write(f"loading {cfg.model.model_name} on {cfg.resolved_engine()}...\n")
        sys.stderr.flush()
    try:
        engine = build_engine(cfg)
    except KeyboardInterrupt:  # Ctrl-C while the model loads
        raise SystemExit(130) from None
    try:
        supported = engine.get_supported_params()
        engine_name = str(cfg.resolved_engine())
        session = ChatSession(
            cfg.generation,
            system_prompt=system_prompt,
            images=images,
            accepts_images=engine.capabilities.images,
            engine_name=engine_name,
            model_name=cfg.model.model_name,
            supported_params=supported,
            preset=chat_preset(cfg.generation, supported, engine_name) if preset else None,
            tools=tools,
        )
        if tools:
            engine.check(cfg.generation, tools=True)
        for notice in session.notices:
            sys.stderr.write(f"note: {notice}\n")
        code = asyncio.run(_interactive(engine, session) if interactive else _piped(engine, session))
    except KeyboardInterrupt:
        code = 130
    finally:
        engine.close()
    if code:
        raise SystemExit(code)


# ---------------------------------------------------------------------- piped stdin


async def _piped(engine: InferenceEngine, session: ChatSession, stdin: TextIO | None = None) -> int:
    failed = 0
    for text in _turns(stdin or sys.stdin):
        if session.is_command(text):
            result = session.run(text)
            if result.text:
                sys.stderr.write(result.text + "\n")
            if result.exit:
                break
            if not result.ask:
                continue
        conversation = session.pending() if session.is_command(text) else session.ask(session.message_text(text))
        answer = Answer()
        try:
            await stream_answer(engine, conversation, session.generation, answer, _out)
        except Exception as exc:
            session.withdraw()
            failed += 1
            sys.stderr.write(f"error: {_describe(exc)}\n")
            continue
        session.answered(answer.message or answer.text)
        _out("\n")
    return 3 if failed else 0


def _turns(lines: Iterable[str]) -> Iterator[str]:
    """The non-empty inputs in ``lines``, joining lines that end with a backslash to the next one."""
    pending: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        pending.append(line)
        if not line.endswith("\\"):
            text = join_continuations(pending).strip()
            pending = []
            if text:
                yield text
    if pending and join_continuations(pending).strip():
        yield join_continuations(pending).strip()


def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _describe(exc: BaseException) -> str:
    from infermux.errors import InfermuxError

    return str(exc) if isinstance(exc, InfermuxError) else f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------- terminal


async def _interactive(engine: InferenceEngine, session: ChatSession) -> int:
    prompt = _make_prompt()
    _out(f"infermux chat · {session.model_name} on {session.engine_name} · /help for commands · Ctrl-D to leave\n")
    if session.preset:
        settings = " ".join(f"{k}={v}" for k, v in session.preset.items())
        _out(f"{_DIM}chat preset (no config given): {settings} · /params to change{_RESET}\n")
    while True:
        try:
            line: str = await prompt.prompt_async(PROMPT)
        except KeyboardInterrupt:  # Ctrl-C at the prompt clears the line
            continue
        except EOFError:  # Ctrl-D
            _out("\n")
            return 0
        text = line.strip()
        if not text:
            continue
        if session.is_command(text):
            result = session.run(text)
            if result.text:
                _out(f"{_RED if result.error else _DIM}{result.text}{_RESET}\n")
            if result.exit:
                return 0
            if result.ask:
                await _answer_on_screen(engine, session, None)
            continue
        await _answer_on_screen(engine, session, session.message_text(text))


async def _answer_on_screen(engine: InferenceEngine, session: ChatSession, text: str | None) -> None:
    conversation = session.ask(text) if text is not None else session.pending()
    answer = Answer()
    spinner = _Spinner(answer.started)

    def write(delta: str) -> None:
        spinner.clear()  # before the first character of the answer, once
        _out(delta)

    task = asyncio.ensure_future(stream_answer(engine, conversation, session.generation, answer, write))
    loop = asyncio.get_running_loop()
    with _on_sigint(loop, task.cancel):
        try:
            await task
        except asyncio.CancelledError:
            answer.stopped = True
        except Exception as exc:
            spinner.clear()
            _out(("\n" if answer.parts else "") + f"{_RED}error: {_describe(exc)}{_RESET}\n")
            session.withdraw()
            return
        finally:
            spinner.clear()
    if answer.stopped:
        _out(("\n" if answer.parts else "") + f"{_DIM}[stopped]{_RESET}\n")
        if answer.text:
            session.answered(answer.text)
        else:
            session.withdraw()
        return
    session.answered(answer.message or answer.text)
    if str(answer.metadata.get("finish_reason")) == "length":  # say the answer is cut (a cut call shows nothing)
        _out(f"\n{_DIM}  [cut at max_new_tokens: raise it to see the whole answer]{_RESET}")
    _out(f"\n{_DIM}  {format_footer(answer)}{_RESET}\n")


class _Spinner:
    """The waiting animation, drawn until :meth:`clear` erases it.

    ``clear`` is idempotent and synchronous: the first call stops the animation and erases its line at
    once, later calls do nothing. (Cancelling the animation's task is not enough to know it is gone: a
    cancelled task stays "not done" until the event loop runs it again, and a fast server can deliver
    several pieces of the answer before that — each would have erased the line the previous one wrote.)
    """

    def __init__(self, started: float) -> None:
        self.started = started
        self.active = True
        self._task = asyncio.ensure_future(self._spin())

    async def _spin(self) -> None:
        for i in itertools.count():
            if not self.active:
                return
            frame = _SPINNER[i % len(_SPINNER)]
            _out(f"\r{_DIM}{frame} {time.perf_counter() - self.started:.1f}s{_RESET}")
            await asyncio.sleep(0.1)

    def clear(self) -> None:
        if self.active:
            self.active = False
            self._task.cancel()
            _out("\r\x1b[K")


@contextlib.contextmanager
def _on_sigint(loop: asyncio.AbstractEventLoop, callback: Any) -> Any:
    """Call ``callback`` on Ctrl-C (instead of raising KeyboardInterrupt) inside the block."""
    try:
        loop.add_signal_handler(signal.SIGINT, callback)
    except (NotImplementedError, RuntimeError):  # not the main thread, or no signal support (Windows)
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def _make_prompt() -> Any:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory, History, InMemoryHistory
    from prompt_toolkit.key_binding import KeyBindings

    bindings = KeyBindings()

    @bindings.add("enter")
    def _enter(event: Any) -> None:
        buffer = event.current_buffer
        if buffer.document.is_cursor_at_the_end and buffer.text.endswith("\\"):
            buffer.delete_before_cursor(1)
            buffer.insert_text("\n")
        else:
            buffer.validate_and_handle()

    history: History = InMemoryHistory()
    where = os.environ.get("INFERMUX_CHAT_HISTORY")
    if where is None:
        from infermux.models.default import cache_dir

        where = str(cache_dir() / "chat_history")
    if where:  # INFERMUX_CHAT_HISTORY="" keeps the history in memory only
        try:
            Path(where).expanduser().parent.mkdir(parents=True, exist_ok=True)
            history = FileHistory(str(Path(where).expanduser()))
        except OSError:
            pass
    return PromptSession(
        history=history, key_bindings=bindings, multiline=True, prompt_continuation="...> ", enable_history_search=False
    )
