"""Run every benchmark, one after another (never side by side: they would skew each other).

Run: .venv/bin/python benchmarks/run_all.py [--only core,remote,endpoints,native,llamacpp,vllm,chat,serve,ray]
Each benchmark prints its own table with ratios against the raw library or a bare baseline; the
figures we keep are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = {
    "core": ["bench_core.py"],
    "remote": ["bench_remote.py"],
    "endpoints": ["bench_endpoints.py"],
    "native": ["bench_native.py", "--workload", "all"],
    "llamacpp": ["bench_llamacpp.py", "--workload", "all"],
    "vllm": ["bench_vllm.py", "--workload", "all"],
    "chat": ["bench_chat_ttft.py"],
    "serve": ["bench_serve.py"],
    "ray": ["bench_ray.py"],
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default=",".join(BENCHES), help="comma-separated subset of " + ", ".join(BENCHES))
    args = parser.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    failed = []
    for name in args.only.split(","):
        script, *rest = BENCHES[name.strip()]
        print(f"\n===== {name} ({script}) — load average {os.getloadavg()[0]:.1f}", flush=True)
        t0 = time.perf_counter()
        code = subprocess.call([sys.executable, str(HERE / script), *rest], env=env, cwd=HERE.parent)
        print(f"===== {name}: {'ok' if code == 0 else f'exit {code}'} in {time.perf_counter() - t0:.0f} s", flush=True)
        if code:
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
