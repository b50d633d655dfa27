"""What the chat shows on a terminal, read through a terminal emulator (pyte) fed from a real pty.

The server is the OpenAI chat fake in burst mode: the whole streamed answer arrives in one read, so the
client handles many pieces of text in one go — the case where the waiting spinner's erase used to land
after the first piece and wipe it from the screen.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.chat_driver import ChatDriver
from tests.fakes import Exchange, FakeOpenAIChat

pytest.importorskip("pyte")
pytestmark = pytest.mark.slow


def reply(ex: Exchange) -> str:
    return f"This is turn {len(ex.turns) // 2 + 1} of a conversation with {len(ex.turns)} messages so far."


@pytest.fixture
def server() -> Iterator[FakeOpenAIChat]:
    with FakeOpenAIChat(reply, burst=True) as fake:
        assert isinstance(fake, FakeOpenAIChat)
        yield fake


def test_a_burst_streamed_answer_is_shown_whole_from_its_first_word(server: FakeOpenAIChat, tmp_path: Path) -> None:
    chat = ChatDriver(
        ["--engine", "REMOTE", "--remote_params.api_url", server.url, "--model.model_name", "m"], tmp_path
    )
    try:
        for turn, question in enumerate(["Hello.", "And again?", "Once more."]):
            chat.say(question)
            chat.answer()
            expected = f"This is turn {turn + 1} of a conversation with {2 * turn + 1} messages so far."
            screen = chat.screen()
            assert expected in screen, "\n".join(screen)  # a line that is exactly the answer: nothing erased
            assert not any(ch in "\n".join(screen) for ch in "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")  # and no spinner left over
        assert len(server.requests) == 3 and all(r.json["stream"] for r in server.requests)
        assert chat.exit() == 0
    finally:
        chat.kill()
