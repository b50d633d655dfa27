"""What every provider's `infermux batch run` tests share: 50 rows with a failed and an expired one,
run to the end, and killed at a stage then rerun (the fake holds a request there: tests/fakes/stages.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, run_cli

ROWS = 50


def write_rows(path: Path, n: int = ROWS) -> Path:
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"question {i}"}]}) + "\n"
                            for i in range(n)))  # fmt: skip
    return path


def answers(out: Path) -> list[str]:
    return [json.loads(line)["messages"][0]["content"] for line in out.read_text().splitlines()]


def online(fake: Any) -> list[str]:
    """The questions the fake was asked online (not in a batch), sorted: chat completions, Gemini's
    generateContent or Bedrock's Converse."""
    asked = [r.json["messages"][0]["content"] for r in fake.requests if r.path.endswith("/chat/completions")]
    asked += [r.json["contents"][0]["parts"][0]["text"] for r in fake.requests if r.path.endswith(":generateContent")]
    asked += [r.json["messages"][0]["content"][0]["text"] for r in fake.requests if r.path.endswith("/converse")]
    return sorted(asked)


def run_args(config: Path, rows: Path, out: Path) -> list[str]:
    return ["batch", "run", "-c", str(config), "--input_path", str(rows), "--output_path", str(out),
            "--poll-interval", "0.01"]  # fmt: skip


def run_to_the_end(fake: Any, args: list[str], env: dict[str, str], out: Path, failed: int, expired: int) -> None:
    """`batch run` answers every row, rows ``failed`` and ``expired`` online once; a rerun sends nothing."""
    first = run_cli(*args, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"batch: {ROWS - 2} rows answered, 2 not" in first.stdout, first.stdout
    assert "online: 2 rows answered, 0 failed" in first.stdout, first.stdout
    assert online(fake) == sorted([f"question {failed}", f"question {expired}"])  # each answered online once
    assert answers(out) == [f"question {i}" for i in range(ROWS)]
    before = len(fake.requests)
    again = run_cli(*args, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert [r.path for r in fake.requests[before:] if r.method == "POST"] == []
    assert answers(out) == [f"question {i}" for i in range(ROWS)]


def kill_then_rerun(fake: Any, args: list[str], env: dict[str, str], out: Path, hold: tuple[str, str, bool],
                    rerun_online: bool) -> None:  # fmt: skip
    """Kill `batch run` while the fake holds the request ``hold`` (method, path pattern, after acting),
    rerun it: every row once, in input order; the two rows the batch did not answer are asked online once
    each, again only where the kill lost an online answer (``rerun_online``)."""
    method, pattern, after = hold
    fake.hold(method, pattern, after=after)
    proc = subprocess.Popen([sys.executable, "-m", "infermux", *args], env=env, cwd=str(ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        assert fake.reached.wait(90), f"the job never sent {method} {pattern}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        fake.release()
    again = run_cli(*args, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert answers(out) == [f"question {i}" for i in range(ROWS)]
    asked = online(fake)
    assert len(set(asked)) == 2
    # only answers lost in the kill (both rows may have been in flight) are asked again
    assert len(asked) in ((3, 4) if rerun_online else (2,))
