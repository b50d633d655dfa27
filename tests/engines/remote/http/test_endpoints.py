"""One remote engine over several real servers (``remote_params.endpoints``): routing, failover, cooldown.

The servers are ``benchmarks/stub_server.py`` processes on 127.0.0.1; a test kills one with SIGKILL in
the middle of a job (its connections reset, new ones refused) and, in another, starts it again on the
same port.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infermux.configs import InferenceConfig, ModelParams, RemoteParams
from infermux.configs.endpoint_params import EndpointParams
from infermux.engines.health import Health
from infermux.engines.registry import build_engine
from infermux.errors import ConfigError
from infermux.types import Conversation
from tests.servers import STUB_SERVER, free_port


class Stub:
    """A stub server process on a fixed port that can be killed and started again."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.args = args
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        """Start on this stub's port; the first start moves to another port if something else took it
        meanwhile (a restart must come back on the same one)."""
        for _ in range(1 if self.proc is not None else 3):
            cmd = [sys.executable, str(STUB_SERVER), "--port", str(self.port), *self.args]
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1)
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()
            if line.startswith("READY "):
                return
            self.proc.wait()
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
        raise AssertionError(f"stub did not start: {line!r}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/_stub/stats", timeout=10) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]


@pytest.fixture
def stubs() -> Iterator[list[Stub]]:
    servers = [Stub("--latency-ms", "5") for _ in range(4)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.kill()


def conv(text: str) -> Conversation:
    return Conversation.model_validate({"messages": [{"role": "user", "content": text}]})


def _config(stubs: list[Stub], **extra: Any) -> InferenceConfig:
    endpoints = [EndpointParams(url=s.url + "/v1", name=f"node{i}", num_workers=8) for i, s in enumerate(stubs)]
    remote = RemoteParams(endpoints=endpoints, retry_backoff_base=0.05, **extra)
    return InferenceConfig(model=ModelParams(model_name="stub"), engine="REMOTE_VLLM", remote_params=remote)


def _run(config: InferenceConfig, rows: int, tmp_path: Path, at: dict[int, Any]) -> list[dict[str, Any]]:
    """Run a ``rows``-row job; after the n-th answered row, call ``at[n]()``. The output's rows as dicts."""
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(conv(f"row {i}").to_json_dict()) + "\n" for i in range(rows)))
    output = tmp_path / "out.jsonl"
    engine = build_engine(config)
    seen = [0]

    def on_row(row: Any, result: Any) -> None:
        seen[0] += 1
        if seen[0] in at:
            at[seen[0]]()

    report = asyncio.run(engine.run_file(str(source), str(output), on_row=on_row))
    assert report.failed == 0, report
    return [json.loads(line) for line in output.read_text().splitlines()]


def test_a_server_killed_mid_job_loses_no_row_and_duplicates_none(stubs: list[Stub], tmp_path: Path) -> None:
    out = _run(_config(stubs), 2000, tmp_path, {600: stubs[2].kill})
    assert [r["messages"][-1]["content"] for r in out] == [f"echo: row {i}" for i in range(2000)]  # once, in order
    by = Counter(r["metadata"]["endpoint"] for r in out)
    assert set(by) == {"node0", "node1", "node2", "node3"}, by
    assert by["node2"] < 700, by  # it stopped answering when it was killed
    assert all(by[f"node{i}"] > 400 for i in (0, 1, 3)), by  # the others took its share
    served = sum(stubs[i].stats()["completed"] for i in (0, 1, 3)) + by["node2"]
    assert served >= 2000  # every row was answered by a server (a row cut off at node2 was answered again)
    assert not any("sk-" in json.dumps(r["metadata"]) for r in out)


def test_a_killed_server_that_comes_back_is_used_again(stubs: list[Stub], tmp_path: Path) -> None:
    # Started again while the job runs (the job waits for it: the restart blocks the event loop a moment).
    config = _config(stubs, endpoint_cooldown=0.2)
    out = _run(config, 2000, tmp_path, {300: stubs[1].kill, 500: stubs[1].start})
    assert [r["messages"][-1]["content"] for r in out] == [f"echo: row {i}" for i in range(2000)]
    nodes = [r["metadata"]["endpoint"] for r in out]
    answered_after = stubs[1].stats()["completed"]  # the new process counts only what it answered
    assert answered_after > 50, answered_after
    assert nodes[-600:].count("node1") > 50  # in the job's last rows too


@pytest.mark.parametrize(("workers", "weight"), [((4, 12), 1.0), ((6, 6), 3.0)])
def test_least_busy_routing_follows_workers_and_weight(workers: tuple[int, int], weight: float, tmp_path: Path) -> None:
    # 50 ms servers: the time a row spends in flight is the server's, not the (loaded) client's.
    slow = [Stub("--latency-ms", "50"), Stub("--latency-ms", "50")]
    try:
        for server in slow:
            server.start()
        endpoints = [
            EndpointParams(url=slow[0].url, num_workers=workers[0]),
            EndpointParams(url=slow[1].url, num_workers=workers[1], weight=weight),
        ]
        remote = RemoteParams(endpoints=endpoints)
        config = InferenceConfig(model=ModelParams(model_name="stub"), engine="REMOTE_VLLM", remote_params=remote)
        out = _run(config, 300, tmp_path, {})
    finally:
        for server in slow:
            server.kill()
    by = Counter(r["metadata"]["endpoint"] for r in out)
    assert by[slow[1].url] > 1.6 * by[slow[0].url] > 0, by  # about 3x and 2.5x when the client keeps up


def test_every_server_down_stops_the_job_with_one_clear_error(tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    endpoints = [EndpointParams(url=f"http://127.0.0.1:{p}/v1") for p in ports]
    remote = RemoteParams(endpoints=endpoints, max_retries=1, retry_backoff_base=0.01, endpoint_cooldown=0.05)
    engine = build_engine(
        InferenceConfig(model=ModelParams(model_name="stub"), engine="REMOTE_VLLM", remote_params=remote)
    )
    from infermux.errors import ServerUnreachableError

    with pytest.raises(ServerUnreachableError, match=r"any of remote_params\.endpoints"):
        engine.infer([conv("x")])


def test_config_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="either api_url"):
        RemoteParams(api_url="http://a", endpoints=[EndpointParams(url="http://b")])
    with pytest.raises(ValueError, match="twice"):
        RemoteParams(endpoints=[EndpointParams(url="http://b"), EndpointParams(url="http://b")])
    monkeypatch.delenv("NODE_KEY", raising=False)
    remote = RemoteParams(endpoints=[EndpointParams(url="http://b", api_key_env="NODE_KEY")])
    with pytest.raises(ConfigError, match="NODE_KEY"):
        build_engine(InferenceConfig(model=ModelParams(model_name="m"), engine="REMOTE_VLLM", remote_params=remote))
    bedrock = InferenceConfig(model=ModelParams(model_name="m"), engine="BEDROCK", remote_params=remote)
    with pytest.raises(ConfigError, match="does not send its requests through"):
        build_engine(bedrock)  # boto3 sends BEDROCK's: endpoints would be ignored, so they are refused
    # the endpoint list never changes the fingerprint (any replica may answer a row)
    one = InferenceConfig(model=ModelParams(model_name="m"), engine="REMOTE_VLLM", remote_params=remote)
    two = one.model_copy(update={"remote_params": RemoteParams(endpoints=[EndpointParams(url="http://c")])})
    assert one.fingerprint() == two.fingerprint()


def test_each_endpoint_sends_its_own_key_and_no_key_is_shown(
    stubs: list[Stub], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NODE_B_KEY", "sk-node-b-secret-123")
    endpoints = [
        EndpointParams(url=stubs[0].url, name="a", api_key="sk-node-a-secret-123"),
        EndpointParams(url=stubs[1].url, name="b", api_key_env="NODE_B_KEY"),
    ]
    config = InferenceConfig(
        model=ModelParams(model_name="stub"), engine="REMOTE_VLLM", remote_params=RemoteParams(endpoints=endpoints)
    )
    engine = build_engine(config)
    assert "secret" not in repr(engine) and "secret" not in repr(config)
    out = engine.infer([conv(f"r{i}") for i in range(20)])
    assert {o.metadata["endpoint"] for o in out} == {"a", "b"}


def test_health_rests_after_a_burst_and_doubles_a_failed_probe() -> None:
    health = Health(10.0, burst=3)
    assert not health.failed() and not health.failed()
    assert health.failed()  # the third in a row
    assert not health.usable(0.0) and health.rest_s == 10.0
    health.rest_until = 1.0  # the rest is over: one probe
    assert health.usable(2.0)
    health.begin(2.0)
    assert not health.usable(2.0)  # a second request waits for the probe's answer
    assert health.failed()
    assert health.rest_s == 20.0
    health.succeeded()
    assert health.usable(0.0) and health.rest_s == 10.0
    assert health.failed(down=True)  # a refused connection rests at once


def test_a_stream_goes_to_a_live_endpoint_and_names_it(stubs: list[Stub]) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    endpoints = [EndpointParams(url=dead, name="dead"), EndpointParams(url=stubs[0].url + "/v1", name="live")]
    remote = RemoteParams(endpoints=endpoints, retry_backoff_base=0.01)
    engine = build_engine(
        InferenceConfig(model=ModelParams(model_name="stub"), engine="REMOTE_VLLM", remote_params=remote)
    )

    async def chat() -> list[Any]:
        answers = []
        async with engine.session():
            for i in range(3):
                answers.append([event async for event in engine.stream(conv(f"hi {i}"))])
        return answers

    for i, events in enumerate(asyncio.run(chat())):
        final = events[-1]
        assert final.conversation is not None and final.conversation.messages[-1].content == f"echo: hi {i}"
        assert final.conversation.metadata["endpoint"] == "live"


def test_a_server_answering_500s_rests_and_the_rows_go_elsewhere(tmp_path: Path) -> None:
    failing, good = Stub("--fault-rate", "1", "--faults", "500"), Stub("--latency-ms", "5")
    try:
        failing.start()
        good.start()
        endpoints = [EndpointParams(url=failing.url, name="failing"), EndpointParams(url=good.url, name="good")]
        remote = RemoteParams(endpoints=endpoints, num_workers=4, retry_backoff_base=0.01, endpoint_cooldown=30)
        config = InferenceConfig(model=ModelParams(model_name="stub"), engine="REMOTE_VLLM", remote_params=remote)
        out = _run(config, 300, tmp_path, {})
        tried = failing.stats()["requests"]
    finally:
        failing.kill()
        good.kill()
    assert {r["metadata"]["endpoint"] for r in out} == {"good"}
    assert [r["messages"][-1]["content"] for r in out] == [f"echo: row {i}" for i in range(300)]
    assert 3 <= tried <= 8, tried  # a burst of 500s (its 4 workers' first tries), then it rested
