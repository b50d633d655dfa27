"""The chat against a real llama.cpp server through the REMOTE engine, in a pty and piped.

A recording proxy (``tests/fakes/stream_proxy.py``) sits between the chat and the server: it shows what
the server received (history sent or not) and can hold a streamed answer half-way, which proves that
text reaches the screen before the answer is over and gives Ctrl-C a known moment to land.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infermux.jobs.rows import iter_rows
from tests.cli.chat_driver import PROMPT, ChatDriver, plain
from tests.conftest import ROOT, cli_env
from tests.fakes.openai_chat import FakeOpenAIChat
from tests.fakes.stream_proxy import StreamProxy
from tests.servers import free_port, llama_cpp_server

pytestmark = pytest.mark.slow

HOLD_S = 240  # how long to wait for the proxy to reach its hold point (a loaded 2-core machine is slow)


@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    with llama_cpp_server() as url:
        yield url


@pytest.fixture
def proxy(llama_server: str) -> Iterator[StreamProxy]:
    with StreamProxy(llama_server) as server:
        assert isinstance(server, StreamProxy)
        yield server
        server.release()


def remote_args(url: str, *extra: str) -> list[str]:
    return ["--engine", "REMOTE", "--remote_params.api_url", url, "--model.model_name", "smollm2", *extra]


def chat_requests(proxy: StreamProxy) -> list[dict[str, Any]]:
    return [r.json for r in proxy.requests if r.path.endswith("/chat/completions")]


def test_two_turns_keep_history_reset_clears_and_save_writes_batch_input(proxy: StreamProxy, tmp_path: Path) -> None:
    chat = ChatDriver(
        remote_args(proxy.url, "--system-prompt", "You are terse.", "--generation.max_new_tokens", "12"), tmp_path
    )
    try:
        chat.say("My name is Ada.")
        chat.answer()
        chat.say("What is my name?")
        chat.answer()
        saved = tmp_path / "chat.jsonl"
        chat.command(f"/save {saved}", "saved 5 messages")

        (row,) = list(iter_rows(str(saved)))  # what batch mode reads
        messages = [{"role": m.role.value, "content": m.text} for m in row.conversation.messages]
        first_answer = messages[2]
        assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
        assert first_answer["content"].strip()

        first, second = chat_requests(proxy)
        assert first["stream"] is True
        assert first["messages"] == messages[:2]
        assert second["messages"] == messages[:4]  # the second request carried the first turn

        chat.command("/reset", "conversation cleared")
        chat.say("Hello.")
        chat.answer()
        assert chat_requests(proxy)[-1]["messages"] == [messages[0], {"role": "user", "content": "Hello."}]
        assert chat.exit() == 0
    finally:
        chat.kill()


def test_text_reaches_the_screen_before_the_answer_ends_and_ctrl_c_stops_it(proxy: StreamProxy, tmp_path: Path) -> None:
    chat = ChatDriver(remote_args(proxy.url, "--generation.max_new_tokens", "64"), tmp_path)
    try:
        proxy.hold_after(6)  # the role chunk and five pieces of text, then nothing until released
        chat.say("Count from 1 to 40, separated by commas.")
        assert proxy.held.wait(HOLD_S), "the server never streamed six events"
        shown = proxy.forwarded_text()
        assert shown.strip()
        # The rest of the answer is held by the proxy, yet its beginning is already on screen.
        chat.child.expect_exact(shown.rstrip().splitlines()[-1])
        assert PROMPT.search(plain(str(chat.child.before)).split("Count from 1 to 40")[-1]) is None

        chat.child.sendintr()  # Ctrl-C
        chat.child.expect_exact("[stopped]")
        chat.child.expect(PROMPT)
        proxy.release()

        chat.say("Thanks.")  # the session goes on, with the stopped answer in the history
        chat.answer()
        last = chat_requests(proxy)[-1]["messages"]
        assert last == [
            {"role": "user", "content": "Count from 1 to 40, separated by commas."},
            {"role": "assistant", "content": shown},
            {"role": "user", "content": "Thanks."},
        ]
        assert chat.exit() == 0
    finally:
        chat.kill()


def _run_piped(args: list[str], stdin: str, command: tuple[str, ...] = ("chat",)) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infermux", *command, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=str(ROOT),
        timeout=600,
    )


def test_piped_stdin_answers_each_line_in_plain_text(proxy: StreamProxy) -> None:
    stdin = "/system Answer in one short sentence.\nMy name is \\\nAda.\n\nWhat is my name?\n"
    done = _run_piped(remote_args(proxy.url, "--generation.max_new_tokens", "10"), stdin)
    assert done.returncode == 0, done.stderr
    first, second = chat_requests(proxy)
    assert first["messages"] == [
        {"role": "system", "content": "Answer in one short sentence."},
        {"role": "user", "content": "My name is \nAda."},
    ]
    answer1 = second["messages"][2]["content"]
    assert second["messages"][3] == {"role": "user", "content": "What is my name?"}
    assert done.stdout.startswith(answer1 + "\n")
    answer2 = done.stdout[len(answer1) + 1 :]
    assert answer2.strip() and answer2.endswith("\n")
    assert "\x1b" not in done.stdout  # plain text for scripts
    assert "system prompt set." in done.stderr


@pytest.mark.parametrize("command", [("chat",), ("infer", "-i")])
def test_piped_failure_is_reported_on_stderr_with_a_nonzero_exit(command: tuple[str, ...]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    done = _run_piped(remote_args(dead, "--remote_params.max_retries", "0"), "hello\n", command)
    assert done.returncode == 3
    assert done.stdout == ""
    assert "error:" in done.stderr and "cannot connect" in done.stderr.lower()


@pytest.mark.parametrize("command", [("chat",), ("infer", "-i")])
def test_a_stream_cut_short_fails_with_exit_3_not_a_short_answer(command: tuple[str, ...]) -> None:
    with FakeOpenAIChat(lambda ex: "The answer is 4", stream_style="cut") as fake:
        done = _run_piped(remote_args(f"{fake.url}/v1", "--remote_params.max_retries", "0"), "2+2?\n", command)
    assert done.returncode == 3, done.stderr
    assert "ended before the answer did" in done.stderr and "Traceback" not in done.stderr


def test_an_answer_cut_at_max_new_tokens_says_so(tmp_path: Path) -> None:
    with FakeOpenAIChat(lambda ex: "one two three four five six seven eight") as fake:
        chat = ChatDriver(remote_args(f"{fake.url}/v1", "--generation.max_new_tokens", "3"), tmp_path, timeout=120)
        try:
            chat.say("count")
            chat.answer()
            assert "[cut at max_new_tokens" in plain(chat.output.getvalue())
            assert chat.exit() == 0
        finally:
            chat.kill()
