"""Drive ``infermux chat`` in a pseudo-terminal, as a person would (pexpect), and read its screen (pyte)."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pexpect

from tests.conftest import ROOT, cli_env

PROMPT = re.compile(r"you>")
#: The dim footer printed after each finished answer, e.g. "12 tokens · 40.1 tokens/s · first token 0.20 s · 0.5 s".
FOOTER = re.compile(r"\x1b\[2m  ([^\x1b]*\d+\.\d\d s)\x1b\[0m")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def plain(text: str) -> str:
    """``text`` without terminal escape sequences and carriage returns."""
    return _ANSI.sub("", text).replace("\r", "")


class ChatDriver:
    """A chat process in a pty: ``say`` a line, wait for the ``answer`` footer, run ``command``s."""

    ROWS, COLUMNS = 50, 250

    def __init__(self, args: list[str], tmp_path: Path, *, timeout: float = 300) -> None:
        env = cli_env(PROMPT_TOOLKIT_NO_CPR="1", INFERMUX_CHAT_HISTORY=str(tmp_path / "history"), TERM="xterm")
        self.child = pexpect.spawn(
            sys.executable,
            ["-m", "infermux", "chat", *args],
            env=env,
            cwd=str(ROOT),
            encoding="utf-8",
            timeout=timeout,
            dimensions=(self.ROWS, self.COLUMNS),
        )
        self.output = io.StringIO()  # everything the chat wrote to the terminal, escape sequences included
        self.child.logfile_read = self.output
        self.child.expect(PROMPT)

    def say(self, text: str) -> None:
        self.child.sendline(text)

    def answer(self) -> str:
        """Wait for the answer's footer and the next prompt; return the footer."""
        self.child.expect(FOOTER)
        footer = str(self.child.match.group(1))
        self.child.expect(PROMPT)
        return footer

    def command(self, line: str, reply: str) -> str:
        """Run a slash command, wait for ``reply`` in its output and the next prompt; the output line."""
        self.child.sendline(line)
        self.child.expect_exact(reply)
        self.child.expect(PROMPT)
        return reply + plain(str(self.child.before)).split("\n")[0]

    def screen(self) -> list[str]:
        """The lines a person sees now: the output so far played through a terminal emulator."""
        import pyte

        screen = pyte.Screen(self.COLUMNS, self.ROWS)
        pyte.Stream(screen).feed(self.output.getvalue())
        return [line.rstrip() for line in screen.display]

    def exit(self) -> int | None:
        """Leave with Ctrl-D; the exit status."""
        self.child.sendeof()
        self.child.expect(pexpect.EOF)
        self.child.close()
        return self.child.exitstatus

    def kill(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)
