"""The README's first command, in a child process with a time limit: does the default engine answer here?

``make test`` and ``make demo`` run this first, so a native crash (llama.cpp on a CPU it was not built
for, or its AMX path) fails at the top in seconds with its likely cause, instead of as a hundred test
failures or a suite that hangs. Exit status: 0 when every row was answered; 1 otherwise, after saying
why and how to fix it.

    python scripts/check_first_answer.py [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INPUT = ROOT / "configs" / "examples" / "conversations.jsonl"


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def likely_cause(code: int) -> str:
    """What a child's negative exit status most likely means here, and what to do about it."""
    name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else f"signal {-code}"
    amx = sorted(f for f in cpu_flags() if f.startswith("amx"))
    if name == "SIGILL":
        return (
            f"it was killed by {name}: llama-cpp-python was compiled for a CPU with instructions this one lacks "
            "(a native build made on another machine or a wheel cached from one; or, on a CPU without AVX2, the "
            "portable build). Build it for this CPU: rm -f .venv/.llamacpp && make test "
            "LLAMACPP_CMAKE_ARGS=-DGGML_NATIVE=ON, or pip install --force-reinstall --no-cache-dir --no-deps "
            "'llama-cpp-python==0.3.36' (docs/install.md, 'A portable llama.cpp build')."
        )
    if name == "SIGSEGV" and amx:
        return (
            f"it was killed by {name} on a CPU with AMX ({' '.join(amx)}): llama.cpp's AMX path crashes "
            "(llama.cpp issue #20824). infermux turns llama.cpp's extra buffer types off on such a CPU unless "
            "model_kwargs.use_extra_bufts is true: check that setting, then report `infermux engines --verbose`."
        )
    return f"it was killed by {name}: a native crash in an engine library; report `infermux engines --verbose`."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=300, help="seconds before the answer counts as hung")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="infermux-first-answer-") as tmp:
        out = Path(tmp) / "answers.jsonl"
        # An empty answer cache: a cached row would answer without loading the model.
        env = {**os.environ, "INFERMUX_CACHE_DIR": str(Path(tmp) / "cache"), "HF_HUB_OFFLINE": "1"}
        cmd = [sys.executable, "-m", "infermux", "infer", "--input_path", str(INPUT), "--output_path", str(out)]
        print("checking that the default engine answers: infermux infer --input_path", INPUT.relative_to(ROOT))
        start = time.monotonic()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout, cwd=ROOT)
        except subprocess.TimeoutExpired:
            print(f"FAILED: no answer after {args.timeout:.0f} s: the default engine hangs on this machine.")
            return 1
        elapsed = time.monotonic() - start
        if done.returncode != 0:
            cause = likely_cause(done.returncode) if done.returncode < 0 else f"it exited with {done.returncode}"
            print(f"FAILED: the default engine did not answer: {cause}\n--- its output ends:\n{done.stderr[-3000:]}")
            return 1
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        expected = sum(1 for line in INPUT.read_text(encoding="utf-8").splitlines() if line.strip())
        answered = [r for r in rows if r["messages"][-1]["role"] == "assistant" and r["messages"][-1]["content"]]
        if len(answered) != expected:
            print(f"FAILED: {len(answered)} of {expected} rows answered:\n{done.stderr[-3000:]}")
            return 1
        print(f"ok: {expected} rows answered in {elapsed:.1f} s")
        return 0


if __name__ == "__main__":
    sys.exit(main())
