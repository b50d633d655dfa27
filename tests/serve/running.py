"""``infermux serve`` as a child process for tests: started on a free port, waited for, stopped."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT, cli_env
from tests.servers import free_port
from tests.watchdog import kill, watched


@dataclass
class Served:
    url: str  # http://127.0.0.1:PORT
    log_path: Path
    proc: subprocess.Popen[bytes]

    @property
    def api(self) -> str:
        return self.url + "/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the server (no clean-up at all) and reap it; the watchdog takes it as the test's doing."""
        kill(self.proc)


@contextlib.contextmanager
def serve(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> Iterator[Served]:
    """Run ``python -m infermux serve ARGS --port FREE`` until it answers ``/health``. The server's default
    Batch API folder is a temporary one (``XDG_STATE_HOME``), never the user's, unless ``env`` sets its own."""
    port = free_port()
    state_home = tempfile.mkdtemp(prefix="infermux-state-")
    env = dict(env or cli_env())
    if env.get("XDG_STATE_HOME") == os.environ.get("XDG_STATE_HOME"):
        env["XDG_STATE_HOME"] = state_home
    fd, name = tempfile.mkstemp(prefix="infermux-serve-", suffix=".log")
    os.close(fd)
    log = Path(name)
    with log.open("wb") as out:
        cmd = [sys.executable, "-m", "infermux", "serve", "--port", str(port), *args]
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
    served = Served(f"http://127.0.0.1:{port}", log, proc)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"infermux serve exited with {proc.returncode}:\n{served.log()[-3000:]}")
            try:
                with urllib.request.urlopen(served.url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"infermux serve not ready after {timeout:.0f}s:\n{served.log()[-3000:]}")
            time.sleep(0.25)
        with watched("infermux serve", proc, lambda: served.log()[-3000:]):
            yield served
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(OSError):
            log.unlink()
        shutil.rmtree(state_home, ignore_errors=True)
