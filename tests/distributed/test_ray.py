"""Jobs on a real Ray cluster: a head and a second node on this machine (``ray.cluster_utils.Cluster``).

Every test here is multi-node, so all are ``slow``. The cluster is small on purpose (logical CPUs, an
80 MB object store, no dashboard): the machine running the suite has two cores.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infermux.configs import DistributedParams, GenerationParams, InferenceConfig, ModelParams, RemoteParams
from infermux.distributed import run_on_ray
from infermux.engines.registry import build_engine
from infermux.jobs.storage import job_folder
from infermux.types import Tool
from tests.servers import S3Server, s3_server, stub_server

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STORE = 80 * 1024 * 1024


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from ray.cluster_utils import Cluster

    node_args = {"num_cpus": 4, "object_store_memory": STORE}
    c = Cluster(initialize_head=True, head_node_args={**node_args, "include_dashboard": False})
    c.add_node(**node_args)
    ray.init(address=c.address, logging_level=logging.WARNING, log_to_driver=False)
    c.wait_for_nodes()
    _wait_for_cpus(8)
    yield c
    ray.shutdown()
    c.shutdown()


def _wait_for_cpus(cpus: float, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0) < cpus:
        assert time.monotonic() < deadline, f"the cluster offers {ray.available_resources()} after {timeout} s"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def stub() -> Iterator[str]:
    with stub_server("--latency-ms", "20") as url:
        yield url


def _stub(url: str, route: str, method: str = "GET") -> Any:
    req = urllib.request.Request(url + route, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def write_input(path: Path, n: int) -> Path:
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"messages": [{"role": "user", "content": f"row {i}"}]}) + "\n")
    return path


def remote_config(url: str, tmp: Path, n: int, *, replicas: int = 4, workers: int = 8, **dist: Any) -> InferenceConfig:
    return InferenceConfig(
        model=ModelParams(model_name="stub"),
        engine="REMOTE",
        remote_params=RemoteParams(api_url=url + "/v1", num_workers=workers, retry_backoff_base=0.05),
        input_path=str(write_input(tmp / "in.jsonl", n)),
        output_path=str(tmp / "out.jsonl"),
        distributed=DistributedParams(replicas=replicas, num_cpus=0.5, **dist),
    )


def single_process(cfg: InferenceConfig, tmp: Path, tools: list[Tool] | None = None) -> bytes:
    """The one-machine job's output file for the same config (and ``--tools``)."""
    import asyncio

    assert cfg.input_path is not None
    out = tmp / "single.jsonl"
    engine = build_engine(cfg)
    try:
        asyncio.run(engine.run_file(cfg.input_path, str(out), fingerprint=cfg.fingerprint(), tools=tools))
    finally:
        engine.close()
    return out.read_bytes()


def test_remote_4_replicas_equal_a_single_process_run(cluster: Any, stub: str, tmp_path: Path) -> None:
    cfg = remote_config(stub, tmp_path, 200)
    report = run_on_ray(cfg)
    assert report.ok and report.done == 200
    assert len(report.replicas) == 4 and all(count > 0 for count in report.per_replica.values())
    assert len({info["node"] for info in report.replicas}) == 2  # spread over both nodes
    assert report.completion_tokens > 0
    assert Path(cfg.output_path or "").read_bytes() == single_process(cfg, tmp_path)
    assert not Path(str(cfg.output_path) + ".partial.jsonl").exists()


def expected_answers(n: int) -> list[str]:
    return [f"echo: row {i}" for i in range(n)]


def answers(path: str | None) -> list[str]:
    assert path is not None
    return [json.loads(line)["messages"][-1]["content"] for line in Path(path).read_text().splitlines()]


def sent_twice(url: str, n: int) -> int:
    """Requests beyond one per row, from the stub's log of what it received; every row was asked."""
    log = _stub(url, "/_stub/log")
    assert set(log) == {f"row {i}" for i in range(n)}
    return len(log) - n


def test_killing_a_replica_mid_job_loses_and_duplicates_nothing(cluster: Any, stub: str, tmp_path: Path) -> None:
    _stub(stub, "/_stub/reset", "POST")
    n, per_call = 400, 16
    cfg = remote_config(stub, tmp_path, n, rows_per_call=per_call)
    killed: list[int] = []

    def kill_one(report: Any) -> None:
        if not killed and report.done >= 100:
            victim = report.replicas[1]
            os.kill(victim["pid"], signal.SIGKILL)
            killed.append(victim["index"])

    report = run_on_ray(cfg, on_progress=kill_one)
    assert killed and report.ok
    assert report.resent_rows > 0  # the dead replica's batches really were sent again
    assert answers(cfg.output_path) == expected_answers(n)  # each row once, in input order
    in_flight_at_kill = per_call * DistributedParams().calls_in_flight
    assert sent_twice(stub, n) <= in_flight_at_kill


def test_removing_a_node_mid_job_loses_and_duplicates_nothing(cluster: Any, stub: str, tmp_path: Path) -> None:
    _stub(stub, "/_stub/reset", "POST")
    node = cluster.add_node(num_cpus=4, object_store_memory=STORE)
    cluster.wait_for_nodes()
    _wait_for_cpus(12)  # the scheduler sees the new node's CPUs (registration alone comes first)
    n, per_call, replicas = 600, 16, 6
    cfg = remote_config(stub, tmp_path, n, replicas=replicas, workers=12, rows_per_call=per_call)
    removed: list[int] = []

    def remove_node(report: Any) -> None:
        if not removed and report.done >= 150:
            on_node = [info for info in report.replicas if info["node"] == node.node_id]
            removed.append(len(on_node))
            cluster.remove_node(node)

    report = run_on_ray(cfg, on_progress=remove_node)
    assert removed and removed[0] >= 1, f"no replica on the node removed: {report.replicas}"
    assert report.ok and report.resent_rows > 0
    assert answers(cfg.output_path) == expected_answers(n)
    in_flight_at_kill = removed[0] * per_call * DistributedParams().calls_in_flight
    assert sent_twice(stub, n) <= in_flight_at_kill


def test_killing_the_driver_then_rerunning_resumes_without_repeating_rows(
    cluster: Any, stub: str, tmp_path: Path
) -> None:
    _stub(stub, "/_stub/reset", "POST")
    n = 600
    data = write_input(tmp_path / "in.jsonl", n)
    out = tmp_path / "out.jsonl"
    config = tmp_path / "job.yaml"
    config.write_text(
        "model: {model_name: stub}\nengine: REMOTE\n"
        f"remote_params: {{api_url: '{stub}/v1', num_workers: 4}}\n"
        "distributed: {replicas: 2, num_cpus: 0.5, rows_per_call: 16}\n"
    )
    cmd = [sys.executable, "-m", "infermux", "infer", "-c", str(config), "--input_path", str(data),
           "--output_path", str(out), "--ray", cluster.address]  # fmt: skip
    partial = Path(str(out) + ".partial.jsonl")
    _kill_driver_once_written(cmd, partial, 100, cwd=ROOT)
    written = partial.read_bytes().count(b"\n")
    assert written < n and not out.exists()

    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "already done" in rerun.stderr
    assert answers(str(out)) == expected_answers(n)
    in_flight_at_kill = 2 * 16 * DistributedParams().calls_in_flight  # replicas × rows per call × calls
    assert sent_twice(stub, n) <= in_flight_at_kill


def test_a_429_storm_on_4_replicas_stays_within_the_job_budget(cluster: Any, tmp_path: Path) -> None:
    workers, retry_after, latency, n = 4, 0.25, 0.01, 40
    args = ["--latency-ms", "10", "--fault-rate", "1", "--faults", "429", "--max-faults-per-body", "2"]
    with stub_server(*args, "--retry-after", str(retry_after)) as url:
        cfg = remote_config(url, tmp_path, n, replicas=4, workers=workers)
        assert cfg.remote_params is not None
        cfg.remote_params.max_retries = 5
        started = time.time()
        report = run_on_ray(cfg)
        ended = time.time()
        stats = _stub(url, "/_stub/stats")
    assert report.ok and answers(cfg.output_path) == expected_answers(n)
    assert stats["requests"] == 3 * n  # two 429s then an answer, per row: nothing sent twice
    assert stats["max_in_flight"] <= workers  # the replicas share one concurrency budget
    # Each of the job's `workers` slots waits `retry_after` after each 429: at most 3 requests per
    # 2·retry_after + 3·latency seconds. Four replicas each with the whole budget would send 4× that.
    budget_rate = 3 * workers / (2 * retry_after + 3 * latency)
    rate = stats["requests"] / (ended - max(started, stats["first_request_at"]))
    assert rate <= 1.5 * budget_rate, f"{rate:.1f} requests/s, budget {budget_rate:.1f}"


def test_llamacpp_2_replicas_equal_a_single_process_run(cluster: Any, tmp_path: Path) -> None:
    prompts = ["Name a colour.", "What is 2+2?", "Say hello.", "Name a fruit.", "Count to three.", "Name a city."]
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": p}]}) + "\n" for p in prompts))
    cfg = InferenceConfig(
        model=ModelParams(model_name="smollm2-135m-instruct", model_kwargs={"n_threads": 1}),
        generation=GenerationParams(max_new_tokens=8, temperature=0.0),
        input_path=str(data),
        output_path=str(tmp_path / "out.jsonl"),
        distributed=DistributedParams(replicas=2, num_cpus=1, rows_per_call=3),
    )
    report = run_on_ray(cfg)
    assert report.ok and sorted(report.per_replica.values()) == [3, 3]
    assert Path(cfg.output_path or "").read_bytes() == single_process(cfg, tmp_path)


def test_a_replica_that_cannot_build_its_engine_is_a_clear_error(cluster: Any, tmp_path: Path) -> None:
    from infermux.distributed.replica import ReplicaStartError

    cfg = InferenceConfig(
        model=ModelParams(model_name=str(tmp_path / "missing.gguf")),
        input_path=str(write_input(tmp_path / "in.jsonl", 3)),
        output_path=str(tmp_path / "out.jsonl"),
        distributed=DistributedParams(replicas=2, num_cpus=0.5),
    )
    with pytest.raises(ReplicaStartError, match=r"missing\.gguf"):
        run_on_ray(cfg)
    assert list(tmp_path.iterdir()) == [tmp_path / "in.jsonl"]  # nothing half-written


def test_failed_rows_get_the_same_records_as_a_single_process_run_and_a_rerun_retries_them(
    cluster: Any, tmp_path: Path
) -> None:
    n = 100
    # Half the bodies get a 400 on their first try (seeded by body, so the same rows in each run): a
    # permanent failure, never retried, so the set of failed rows does not depend on timing; a body's
    # later tries pass.
    args = ["--fault-rate", "0.5", "--faults", "400", "--seed", "3", "--max-faults-per-body", "1"]
    with stub_server(*args) as url:
        cfg = remote_config(url, tmp_path, n)
        assert cfg.remote_params is not None
        cfg.remote_params.max_retries = 1
        report = run_on_ray(cfg)
        _stub(url, "/_stub/reset", "POST")
        single = single_process(cfg, tmp_path)
        assert 0 < report.failed < n and report.done == n - report.failed
        errors = Path(str(cfg.output_path) + ".errors.jsonl")
        single_errors = tmp_path / "single.jsonl.errors.jsonl"
        # Records are equal but for the time the transport spent on the row ("... and 0.1s)").
        got, want = (
            sorted(re.sub(r"and \d+\.\ds\)", "and Ts)", x) for x in f.read_text().splitlines())
            for f in (errors, single_errors)
        )
        assert got == want, "\n".join(sorted(set(got) ^ set(want)))
        assert Path(str(cfg.output_path)).read_bytes() == single
        # The rerun sends only the failed rows; each body has had its faults by now, so they pass.
        before = _stub(url, "/_stub/stats")["requests"]
        rerun = run_on_ray(cfg)
        assert rerun.ok and rerun.resumed == n - report.failed and rerun.done == report.failed
        assert _stub(url, "/_stub/stats")["requests"] - before == report.failed
    assert answers(cfg.output_path) == expected_answers(n)
    assert not errors.exists()


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    pytest.importorskip("moto")
    with s3_server() as server:
        yield server


def test_s3_input_and_output_equal_a_local_run_and_a_killed_driver_resumes(
    cluster: Any, stub: str, s3: S3Server, tmp_path: Path
) -> None:
    """Through the CLI, with ``--tools`` (the stub answers each row with a call of the tool)."""
    _stub(stub, "/_stub/reset", "POST")
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    (tmp_path / "tools.json").write_text(json.dumps([weather]))
    n = 600
    source = s3.put("ray/in.jsonl", write_input(tmp_path / "in.jsonl", n).read_bytes())
    target = f"s3://{s3.bucket}/ray/out.jsonl"
    config = tmp_path / "job.yaml"
    config.write_text(
        "model: {model_name: stub}\nengine: REMOTE\n"
        f"remote_params: {{api_url: '{stub}/v1', num_workers: 4}}\n"
        "distributed: {replicas: 2, num_cpus: 0.5, rows_per_call: 16}\n"
    )
    cmd = [sys.executable, "-m", "infermux", "infer", "-c", str(config), "--input_path", source,
           "--output_path", target, "--ray", cluster.address, "--tools", str(tmp_path / "tools.json")]  # fmt: skip
    env = {**os.environ, **s3.env()}
    folder = tmp_path / job_folder(target)  # the default job folder, under the command's directory
    partial = folder / "out.jsonl.partial.jsonl"
    _kill_driver_once_written(cmd, partial, 100, cwd=tmp_path, env=env)
    assert s3.get("ray/out.jsonl") is None  # nothing uploaded before the job is done

    rerun = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "already done" in rerun.stderr and target in rerun.stderr
    assert sent_twice(stub, n) <= 2 * 16 * DistributedParams().calls_in_flight  # as for a local output
    cfg = remote_config(stub, tmp_path, n, workers=4)
    uploaded = s3.get("ray/out.jsonl") or b""
    assert uploaded == single_process(cfg, tmp_path, tools=[Tool.model_validate(weather)])
    assert uploaded.count(b'"name":"get_weather"') == 2 * n  # each row offers the tool and calls it
    assert not (tmp_path / "infermux-jobs").exists()  # the job folder goes once the output is uploaded


def test_tools_on_a_cluster_answer_as_a_single_process_job_and_share_its_fingerprint(
    cluster: Any, tmp_path: Path
) -> None:
    import asyncio

    from infermux.jobs import run_job_file
    from infermux.jobs.api import default_options

    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    own = {"type": "function", "function": {"name": "own_tool", "parameters": {"type": "object"}}}
    tools = [Tool.model_validate(weather)]
    n = 40
    data = tmp_path / "tools-in.jsonl"
    lines = [{"messages": [{"role": "user", "content": f"row {i}"}]} for i in range(n)]
    lines[3]["tools"] = [own]  # a row's own tools win over --tools
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))

    def single(output: Path, url: str, cfg: InferenceConfig) -> Any:
        engine = build_engine(cfg.model_copy(update={"remote_params": RemoteParams(api_url=url + "/v1")}))
        options = default_options(engine, cfg.generation, cache=False)  # every row answered by the server
        job = run_job_file(engine, str(data), str(output), fingerprint=cfg.fingerprint(), tools=tools, options=options)
        try:
            return asyncio.run(job)
        finally:
            options.close()
            engine.close()

    # Half the bodies get a 400 on their first try: the Ray job leaves failed rows and its partial file.
    args = ["--fault-rate", "0.5", "--faults", "400", "--seed", "3", "--max-faults-per-body", "1"]
    with stub_server(*args) as url:
        cfg = remote_config(url, tmp_path, n, replicas=2, workers=4)
        cfg.input_path = str(data)
        report = run_on_ray(cfg, tools=tools)
        assert 0 < report.failed < n
        # The single-process job finds those rows done: same fingerprint (config + tools).
        resumed = single(Path(str(cfg.output_path)), url, cfg)
        assert resumed.ok and resumed.resumed == n - report.failed
        fresh = single(tmp_path / "fresh.jsonl", url, cfg)
        assert fresh.ok and fresh.resumed == 0
    assert Path(str(cfg.output_path)).read_bytes() == (tmp_path / "fresh.jsonl").read_bytes()
    rows = [json.loads(line) for line in (tmp_path / "fresh.jsonl").read_text().splitlines()]
    calls = [row["messages"][-1]["tool_calls"][0]["function"]["name"] for row in rows]
    assert calls == ["get_weather"] * 3 + ["own_tool"] + ["get_weather"] * (n - 4)


def _kill_driver_once_written(cmd: list[str], partial: Path, rows: int, **popen: Any) -> None:
    """Start the driver ``cmd`` and SIGKILL it once ``partial`` holds ``rows`` answered rows."""
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **popen)
    deadline = time.monotonic() + 180
    while not (partial.exists() and partial.read_bytes().count(b"\n") >= rows):
        assert driver.poll() is None, driver.stderr.read().decode() if driver.stderr else ""
        assert time.monotonic() < deadline, "the driver wrote nothing in 180 s"
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()


def test_the_cli_writes_the_final_progress_line_once(cluster: Any, stub: str, tmp_path: Path) -> None:
    """Not a terminal: a progress line every progress_interval_s while rows are left, then the final line
    once (the last tick of the driver used to repeat it), then the summary."""
    n = 200
    data = write_input(tmp_path / "in.jsonl", n)
    config = tmp_path / "job.yaml"
    config.write_text(
        "model: {model_name: stub}\nengine: REMOTE\nprogress_interval_s: 0.01\n"
        f"remote_params: {{api_url: '{stub}/v1', num_workers: 2}}\n"
        "distributed: {replicas: 2, num_cpus: 0.5, rows_per_call: 8}\n"
    )
    cmd = [sys.executable, "-m", "infermux", "infer", "-c", str(config), "--input_path", str(data),
           "--output_path", str(tmp_path / "out.jsonl"), "--ray", cluster.address]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    progress = re.findall(r"^(\d+)/200 rows, .* rows/s, ETA ", done.stderr, re.MULTILINE)
    assert progress.count("200") == 1, done.stderr
    assert len(progress) > 1 and progress[-1] == "200", done.stderr  # lines while running, the final one last
    assert done.stderr.count(f"{n} answered of {n} rows") == 1

    # On a terminal the bar's last state is the final line: it is not written again below it.
    pexpect, pyte = pytest.importorskip("pexpect"), pytest.importorskip("pyte")
    (tmp_path / "out.jsonl").unlink()
    child = pexpect.spawn(
        cmd[0], cmd[1:], cwd=str(ROOT), timeout=300, dimensions=(50, 250), env={**os.environ, "TERM": "xterm"}
    )
    seen = child.read().decode()
    child.close()
    assert child.exitstatus == 0, seen
    screen = pyte.Screen(250, 50)
    pyte.Stream(screen).feed(seen)
    finals = [line.strip() for line in screen.display if "200/200" in line]
    assert len(finals) == 1 and finals[0].startswith("infer on ray"), screen.display


def test_a_parquet_table_with_row_settings_on_a_cluster_answers_as_one_process(
    cluster: Any, stub: str, tmp_path: Path
) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [{"q": f"row {i}", "k": i, "generation": {"max_new_tokens": 1 + i % 3}} for i in range(60)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet", row_group_size=16)
    paths = {"input_path": str(tmp_path / "in.parquet"), "output_path": str(tmp_path / "out.parquet")}
    cfg = remote_config(stub, tmp_path, 1).model_copy(update={**paths, "prompt_column": "q"})
    report = run_on_ray(cfg)
    assert report.ok and report.done == 60
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("k").to_pylist() == list(range(60))
    assert table.column("answer").to_pylist() == expected_answers(60)
    assert table.column("generation").to_pylist()[4] == {"max_new_tokens": 2}
    again = run_on_ray(cfg)  # finished: the table is read with its columns, nothing is sent
    assert again.already_finished and again.resumed == 60
