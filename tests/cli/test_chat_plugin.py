"""The chat on an engine that cannot stream: the echo plugin engine (tests/plugin_site), in a pty.

It answers "echo: <text>" after ``ECHO_DELAY`` seconds, all at once, and reports usage: the chat shows a
spinner, then the whole answer and a footer without a time to first token.
"""

from __future__ import annotations

from pathlib import Path

import pexpect
import pytest

from infermux.jobs.rows import iter_rows
from tests.cli.chat_driver import PROMPT, ChatDriver
from tests.conftest import run_cli


@pytest.fixture
def slow_echo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECHO_DELAY", "1.5")  # the chat process inherits it through cli_env()


def test_spinner_then_whole_answer_and_footer(slow_echo: None, tmp_path: Path) -> None:
    chat = ChatDriver(["--engine", "ECHO"], tmp_path, timeout=60)
    try:
        chat.say("hello there")
        chat.child.expect(r"⠋ 0\.\d+s")  # the spinner runs while the engine works
        chat.child.expect_exact("\r\x1b[K")  # cleared when the answer arrives
        chat.child.expect_exact("echo: hello there")
        footer = chat.answer()
        assert footer.startswith("2 tokens · ") and "first token" not in footer
        assert chat.exit() == 0
    finally:
        chat.kill()


def test_ctrl_c_before_any_text_withdraws_the_question(slow_echo: None, tmp_path: Path) -> None:
    chat = ChatDriver(["--engine", "ECHO"], tmp_path, timeout=60)
    try:
        chat.say("never answered")
        chat.child.expect(r"⠋ 0\.\d+s")
        chat.child.sendintr()
        chat.child.expect_exact("[stopped]")
        chat.child.expect(PROMPT)
        chat.say("second")
        chat.answer()
        chat.command(f"/save {tmp_path / 'chat.jsonl'}", "saved 2 messages")
        (row,) = list(iter_rows(str(tmp_path / "chat.jsonl")))
        assert [m.text for m in row.conversation.messages] == ["second", "echo: second"]
        assert chat.exit() == 0
    finally:
        chat.kill()


def test_multi_line_input_by_backslash_and_by_paste_and_commands(tmp_path: Path) -> None:
    chat = ChatDriver(["--engine", "ECHO"], tmp_path, timeout=60)
    try:
        chat.child.send("first line\\\r")
        chat.child.send("second line\r")
        chat.answer()
        chat.command(f"/save {tmp_path / 'chat.jsonl'}", "saved 2 messages")
        (row,) = list(iter_rows(str(tmp_path / "chat.jsonl")))
        assert row.conversation.messages[0].text == "first line\nsecond line"
        chat.child.send("\x1b[200~pasted one\npasted two\x1b[201~\r")  # a bracketed paste keeps its newline
        chat.child.expect_exact("echo: pasted one\r\npasted two")
        chat.answer()
        chat.command("/help", "/params [K=V ...]")
        chat.command("/nope", "unknown command /nope; /help lists the commands.")
        chat.say("/exit")
        chat.child.expect(pexpect.EOF)
        chat.child.close()
        assert chat.child.exitstatus == 0
    finally:
        chat.kill()


def test_piped_chat_says_once_that_the_engine_takes_no_images(tmp_path: Path) -> None:
    image = tmp_path / "cat.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    done = run_cli("chat", "--engine", "ECHO", "--image", str(image), input="one\n/image https://x.org/a.png\ntwo\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "echo: one\necho: two\n"
    assert done.stderr.count("does not accept images") == 2  # --image at start, then the /image command
    assert done.stderr.startswith(f"note: ECHO does not accept images; {image} is not sent.\n")
