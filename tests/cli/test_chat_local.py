"""The chat on local engines (LLAMACPP, NATIVE) with the default model, in a pseudo-terminal.

History is checked against a reference: the chat's second answer must equal, for NATIVE, what the same
engine answers in batch mode to the saved conversation up to that question, and for LLAMACPP (whose chat
keeps the first answer's KV, as llama-cpp-python's own chat loop does) what that chat loop answers
(greedy decoding); and it must differ from the answer to the question alone. Ctrl-C is pressed while an answer that cannot end on its own (the
end-of-turn token is banned) is streaming: "[stopped]" proves the text was on screen before generation
finished, and the next turn proves the session and the engine carry on.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from infermux.configs.inference_config import InferenceConfig
from infermux.engines.base import InferenceEngine
from infermux.engines.registry import build_engine
from infermux.jobs.rows import iter_rows
from infermux.types import Conversation, Message, Role
from tests.cli.chat_driver import ChatDriver

pytestmark = pytest.mark.slow

ENGINES = [
    "LLAMACPP",
    pytest.param(
        "NATIVE",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("infermux.engines.native.engine") is None,
            reason="the NATIVE engine is not built yet",
        ),
    ),
]
MAX_NEW = 16
END_OF_TURN = 2  # <|im_end|> in SmolLM2's vocabulary


@pytest.fixture(scope="module", params=ENGINES)
def engine_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def engine(engine_name: str) -> Iterator[InferenceEngine]:
    cfg = InferenceConfig.model_validate({"engine": engine_name, "generation": {"max_new_tokens": MAX_NEW}})
    with build_engine(cfg) as built:
        yield built


def saved_conversation(chat: ChatDriver, path: Path, count: int) -> Conversation:
    chat.command(f"/save {path}", f"saved {count} messages")
    (row,) = list(iter_rows(str(path)))
    return row.conversation


def library_chat_loop(questions: list[str]) -> list[str]:
    """User and assistant texts of a greedy chat held with llama-cpp-python's own loop on the default GGUF
    (each call reuses the KV of the previous prompt and answer)."""
    from llama_cpp import Llama

    from infermux.engines.llamacpp.cpu import model_defaults
    from infermux.engines.llamacpp.settings import llama_kwargs
    from infermux.models import gguf_path

    with model_defaults():  # as the engine loads it (AMX guard, llama_kwargs)
        llm = Llama(model_path=str(gguf_path()), **llama_kwargs({"n_ctx": 2048}))
    try:
        messages: list[dict[str, str]] = []
        for question in questions:
            messages.append({"role": "user", "content": question})
            out = llm.create_chat_completion(
                messages,
                temperature=0.0,
                max_tokens=MAX_NEW,
                top_k=0,
                min_p=0.0,
                top_p=1.0,  # type: ignore[arg-type]
            )
            messages.append({"role": "assistant", "content": out["choices"][0]["message"]["content"]})  # type: ignore[index]
        return [m["content"] for m in messages]
    finally:
        llm.close()


def test_two_turns_carry_history_and_reset_clears_it(engine_name: str, engine: InferenceEngine, tmp_path: Path) -> None:
    # Greedy, as the engine fixture: command-line settings win over the chat preset (no config is given).
    greedy = ["--generation.temperature", "0", "--generation.frequency_penalty", "0"]
    chat = ChatDriver(["--engine", engine_name, "--generation.max_new_tokens", str(MAX_NEW), *greedy], tmp_path)
    try:
        chat.say("My favourite colour is green.")
        footer = chat.answer()
        assert f"{MAX_NEW} tokens" in footer or " tokens · " in footer  # usage reported by the engine
        assert "first token" in footer  # streamed
        chat.say("What is my favourite colour?")
        chat.answer()
        conversation = saved_conversation(chat, tmp_path / "chat.jsonl", 4)
        assert [m.role for m in conversation.messages] == [Role.USER, Role.ASSISTANT, Role.USER, Role.ASSISTANT]

        question = Conversation(messages=conversation.messages[:3])
        alone = Conversation(messages=[conversation.messages[2]])
        with_history, without = engine.infer([question, alone])
        if engine_name == "LLAMACPP":
            assert [m.text for m in conversation.messages] == library_chat_loop(
                [m.text for m in conversation.messages[::2]]
            )
        else:
            assert conversation.messages[3].text == with_history.last_message.text
        assert conversation.messages[3].text != without.last_message.text  # the history mattered

        chat.command("/reset", "conversation cleared")
        chat.say("Hello!")
        chat.answer()
        after_reset = saved_conversation(chat, tmp_path / "again.jsonl", 2)
        assert after_reset.messages[0] == Message(role=Role.USER, content="Hello!")
        assert chat.exit() == 0
    finally:
        chat.kill()


def test_ctrl_c_stops_a_streaming_answer_and_the_session_goes_on(engine_name: str, tmp_path: Path) -> None:
    args = ["--engine", engine_name, "--generation.max_new_tokens", "2000"]
    args += ["--generation.logit_bias", f"{{{END_OF_TURN}: -100}}"]  # the answer cannot end by itself
    chat = ChatDriver(args, tmp_path)
    try:
        chat.say("Count from 1 to 1000.")
        chat.child.expect_exact("\r\x1b[K")  # the spinner is cleared when the first text arrives
        chat.child.expect(r"\w")
        chat.child.sendintr()  # Ctrl-C
        chat.child.expect_exact("[stopped]")
        chat.command("/params max_new_tokens=8 logit_bias={}", "set max_new_tokens=8")
        chat.say("Thanks.")
        chat.answer()
        conversation = saved_conversation(chat, tmp_path / "chat.jsonl", 4)
        stopped = conversation.messages[1]
        assert stopped.role == Role.ASSISTANT and stopped.text.strip()
        assert chat.exit() == 0
    finally:
        chat.kill()


def _repeats(text: str, n: int = 4) -> int:
    """How many times the most frequent run of ``n`` words occurs in ``text``."""
    words = text.split()
    runs = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return max((runs.count(run) for run in runs), default=0)


def test_first_chat_on_the_default_model_answers_without_looping(tmp_path: Path) -> None:
    """`infermux chat` alone (LLAMACPP, default model, chat preset, a fixed seed) stops on its own;
    greedy decoding, the SPEC's default, loops on this question until max_new_tokens."""
    question = "What is the capital of France?"
    chat = ChatDriver(["--generation.seed", "7"], tmp_path)
    try:
        banner = "chat preset (no config given): temperature=0.7 top_p=0.9 frequency_penalty=0.3 · /params to change"
        assert banner in chat.screen()
        chat.say(question)
        footer = chat.answer()
        answer = saved_conversation(chat, tmp_path / "preset.jsonl", 2).messages[1].text
        tokens = int(footer.split(" tokens")[0])
        assert tokens < 256 and _repeats(answer) < 5, (footer, answer)

        chat.command("/params temperature=0 frequency_penalty=0", "set temperature=0")
        chat.command("/reset", "conversation cleared")
        chat.say(question)
        footer = chat.answer()
        looping = saved_conversation(chat, tmp_path / "greedy.jsonl", 2).messages[1].text
        assert footer.startswith("256 tokens") and _repeats(looping) >= 5, (footer, looping)
        assert chat.exit() == 0
    finally:
        chat.kill()
