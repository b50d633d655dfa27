"""Input and output URIs (``s3://``) against moto's S3 server on 127.0.0.1, through pyarrow's S3 file
system; the job's partial and errors files in a local job folder (``job_dir``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from infermux.configs import InferenceConfig, ModelParams
from infermux.jobs import run_config_job
from infermux.jobs.storage import job_folder, shown
from tests.conftest import ROOT, cli_env, run_cli
from tests.servers import S3Server, s3_server

ROWS = [f"row {i}" for i in range(12)]


def jsonl(texts: list[str]) -> bytes:
    return "".join(json.dumps({"messages": [{"role": "user", "content": t}]}) + "\n" for t in texts).encode()


def echo_job(input_path: str, output_path: str, **fields: object) -> InferenceConfig:
    return InferenceConfig(
        model=ModelParams(model_name="echo"),
        engine="ECHO",
        input_path=input_path,
        output_path=output_path,
        cache=False,
        **fields,
    )


def test_shown_hides_secrets_of_a_uri() -> None:
    uri = "gs://user:pw@bucket/out.jsonl?access_key=AK&secret_key=SK&endpoint_override=host:9000"
    assert shown(uri) == "gs://***@bucket/out.jsonl?access_key=***&secret_key=***&endpoint_override=host:9000"


def test_the_default_job_folder_is_named_after_the_output_and_ignores_how_it_is_reached() -> None:
    folder = job_folder("s3://bucket/run/out.jsonl")
    assert folder.parent == Path("infermux-jobs") and folder.name.startswith("out.jsonl-")
    assert job_folder("s3://bucket/run/out.jsonl?endpoint_override=h:1&scheme=http") == folder
    assert job_folder("s3://bucket/other/out.jsonl") != folder
    assert job_folder("s3://bucket/run/out.jsonl", "my-job") == Path("my-job")


def test_job_dir_holds_the_state_of_a_local_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECHO_LOG", str(tmp_path / "sent.log"))
    src = tmp_path / "in.jsonl"
    src.write_bytes(jsonl([*ROWS[:3], "FAIL me"]))
    out, state = tmp_path / "out" / "answers.jsonl", tmp_path / "state"
    report = asyncio.run(run_config_job(echo_job(str(src), str(out), job_dir=str(state))))
    assert report.failed == 1 and report.errors_path == str(state / "answers.jsonl.errors.jsonl")
    assert sorted(p.name for p in state.iterdir()) == ["answers.jsonl.errors.jsonl", "answers.jsonl.partial.jsonl"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["answers.jsonl"]  # nothing beside the output
    rerun = asyncio.run(run_config_job(echo_job(str(src), str(out), job_dir=str(state))))
    assert rerun.resumed == 3 and (tmp_path / "sent.log").read_text().count("FAIL me") == 2  # only it again


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    pytest.importorskip("pyarrow")
    pytest.importorskip("moto")
    with s3_server() as server:
        yield server


@pytest.fixture
def s3_env(s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The S3 server's credentials and endpoint in the environment (as a user sets them); cwd is tmp_path."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    return s3


@pytest.mark.slow
def test_a_job_reads_and_writes_s3_as_a_local_job_does(s3_env: S3Server, tmp_path: Path) -> None:
    source = s3_env.put("in/rows.jsonl", jsonl(ROWS))
    report = asyncio.run(run_config_job(echo_job(source, "s3://jobs/out/answers.jsonl")))
    assert report.ok and report.done == len(ROWS) and report.output_path == "s3://jobs/out/answers.jsonl"
    (tmp_path / "in.jsonl").write_bytes(jsonl(ROWS))
    asyncio.run(run_config_job(echo_job(str(tmp_path / "in.jsonl"), str(tmp_path / "local.jsonl"))))
    assert s3_env.get("out/answers.jsonl") == (tmp_path / "local.jsonl").read_bytes()
    assert not (tmp_path / "infermux-jobs").exists()  # the job folder goes once the job is complete


@pytest.mark.slow
def test_failed_rows_stay_in_the_job_folder_and_a_rerun_sends_only_them(
    s3_env: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ECHO_LOG", str(tmp_path / "sent.log"))
    source = s3_env.put("in/some-fail.jsonl", jsonl([*ROWS[:5], "FAIL this one"]))
    target = "s3://jobs/out/some-fail.jsonl"
    report = asyncio.run(run_config_job(echo_job(source, target)))
    folder = job_folder(target)
    assert report.failed == 1 and report.errors_path == str(folder / "some-fail.jsonl.errors.jsonl")
    assert sorted(p.name for p in folder.iterdir()) == ["some-fail.jsonl.errors.jsonl", "some-fail.jsonl.partial.jsonl"]
    uploaded = (s3_env.get("out/some-fail.jsonl") or b"").splitlines()
    assert [json.loads(line)["messages"][-1]["content"] for line in uploaded] == [f"echo: {t}" for t in ROWS[:5]]

    rerun = asyncio.run(run_config_job(echo_job(source, target)))
    assert rerun.resumed == 5 and rerun.failed == 1
    assert (tmp_path / "sent.log").read_text().splitlines() == [*ROWS[:5], "FAIL this one", "FAIL this one"]


@pytest.mark.slow
def test_unreadable_or_unwritable_uris_are_clear_errors(s3: S3Server, tmp_path: Path) -> None:
    local = tmp_path / "in.jsonl"
    local.write_bytes(jsonl(ROWS[:2]))
    source = s3.put("in/two.jsonl", jsonl(ROWS[:2]))
    wrong_secret = s3.env(AWS_SECRET_ACCESS_KEY="not-the-secret")
    cases = [
        (
            ["--input_path", "s3://jobs/in/missing.jsonl"],
            s3.env(),
            "s3://jobs/in/missing.jsonl: input file not found: bucket 'jobs' has no object 'in/missing.jsonl'.",
        ),
        (
            ["--input_path", "s3://no-such-bucket/in.jsonl"],
            s3.env(),
            "s3://no-such-bucket/in.jsonl: input file not found: bucket 'no-such-bucket' does not exist.",
        ),
        (
            ["--input_path", source, "--output_path", "s3://jobs/out.jsonl", "--job_dir", "s3://jobs/state"],
            s3.env(),
            "s3://jobs/state: job_dir must be a local folder",
        ),
        (
            ["--input_path", str(local), "--output_path", str(tmp_path / "out.jsonl"), "--job_dir", "gs://b/state"],
            s3.env(),
            "gs://b/state: job_dir must be a local folder",
        ),
        (
            ["--input_path", source, "--output_path", "s3://no-such-bucket/out.jsonl"],
            s3.env(),
            "bucket 'no-such-bucket'",
        ),
        (["--input_path", source], wrong_secret, f"{source}: cannot read the input: access denied"),
        (["--input_path", str(local), "--output_path", "s3://jobs/out.jsonl"], wrong_secret, "access denied"),
        (["--input_path", "nosuch://x/in.jsonl"], s3.env(), "nosuch://x/in.jsonl: pyarrow cannot open"),
    ]
    for args, env, says in cases:
        done = run_cli("infer", "--engine", "ECHO", *args, env=cli_env(**env))
        assert done.returncode == 2, done.stderr
        assert says in done.stderr and "Traceback" not in done.stderr
        assert "not-the-secret" not in done.stderr and s3.secret_key not in done.stderr
    assert s3.get("out.jsonl") is None and not list(tmp_path.glob("**/*.partial.jsonl"))
    assert not (tmp_path / "out.jsonl").exists() and not (ROOT / "s3:").exists() and not (ROOT / "gs:").exists()


def test_provider_batch_jobs_keep_their_record_beside_a_local_output(tmp_path: Path) -> None:
    args = ["--engine", "OPENAI", "--model.model_name", "m", "--input_path", str(tmp_path / "in.jsonl")]
    done = run_cli("batch", "submit", *args, "--output_path", "s3://jobs/out.jsonl")
    assert done.returncode == 2 and "give a local path" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_refused_upload_keeps_the_answers_and_a_rerun_uploads_them(
    s3_env: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infermux.errors import OutputError

    source = s3_env.put("in/upload.jsonl", jsonl(ROWS[:4]))
    target = "s3://jobs/out/upload.jsonl"
    for name, value in s3_env.env(reader=True).items():  # may read the bucket, not write to it
        monkeypatch.setenv(name, value)
    with pytest.raises(OutputError, match=r"s3://jobs/out/upload.jsonl: could not upload the output: access denied"):
        asyncio.run(run_config_job(echo_job(source, target)))
    partial = job_folder(target) / "upload.jsonl.partial.jsonl"
    assert partial.read_bytes().count(b"\n") == 4 and s3_env.get("out/upload.jsonl") is None
    for name, value in s3_env.env().items():
        monkeypatch.setenv(name, value)
    rerun = asyncio.run(run_config_job(echo_job(source, target)))
    assert rerun.ok and rerun.resumed == 4 and rerun.done == 0
    assert (s3_env.get("out/upload.jsonl") or b"").count(b"\n") == 4 and not partial.exists()
