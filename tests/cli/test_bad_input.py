"""Every kind of bad input: a clear one-paragraph error, exit code != 0, no traceback, nothing written."""

import json
import os
from pathlib import Path

import pytest

from tests.conftest import run_cli

ECHO_CFG = "engine: ECHO\nmodel:\n  model_name: echo\n"
GOOD = json.dumps({"messages": [{"role": "user", "content": "hi"}]})


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(ECHO_CFG)
    return path


def assert_user_error(res, *needles: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("error: ")
    for needle in needles:
        assert needle in res.stderr, res.stderr


INPUTS = {
    "malformed_json": (GOOD + "\n{not json\n", ["in.jsonl:2", "not valid JSON"]),
    "truncated_json": (GOOD + '\n{"messages": [\n', ["in.jsonl:2", "not valid JSON", "the line ends early"]),
    "json_column": (GOOD + '\n{"messages": [] x}\r\n', ["in.jsonl:2", "at column 17"]),
    "unknown_role": (json.dumps({"messages": [{"role": "robot", "content": "x"}]}) + "\n", ["in.jsonl:1", "unknown role 'robot'"]),
    "empty_messages": ('{"messages": []}\n', ["in.jsonl:1", "'messages' is empty"]),
    "missing_content": ('{"messages": [{"role": "user"}]}\n', ["in.jsonl:1", "content: missing"]),
    "missing_messages": ('{"conversation_id": "a"}\n', ["in.jsonl:1", 'no "messages" field']),
    "empty_file": ("\n\n", ["in.jsonl", "no conversations"]),
    "deeply_nested": (GOOD + '\n{"messages": [], "x": ' + "[" * 100_000 + "]" * 100_000 + "}\n",
                      ["in.jsonl:2", "nested too deeply"]),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_bad_input_lines(tmp_path, cfg, name):
    text, needles = INPUTS[name]
    src = tmp_path / "in.jsonl"
    src.write_text(text)
    out = tmp_path / "out.jsonl"
    res = run_cli("infer", "-c", str(cfg), "--input_path", str(src), "--output_path", str(out))
    assert_user_error(res, *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml", "in.jsonl"]


def test_non_utf8_bytes(tmp_path, cfg):
    src = tmp_path / "in.jsonl"
    src.write_bytes(GOOD.encode() + b"\n" + b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n')
    res = run_cli("infer", "-c", str(cfg), "--input_path", str(src), "--output_path", str(tmp_path / "o.jsonl"))
    assert_user_error(res, "in.jsonl:2", "UTF-8")


def test_ten_megabyte_message(tmp_path, cfg):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"messages": [{"role": "user", "content": "x" * 10_000_000}]}) + "\n")
    res = run_cli("infer", "-c", str(cfg), "--input_path", str(src), "--output_path", str(tmp_path / "o.jsonl"))
    assert_user_error(res, "in.jsonl:1", "10,000,000 characters", "Split or shorten")


def test_several_bad_lines_are_all_listed(tmp_path, cfg):
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join([GOOD, "{", GOOD, "[]", GOOD]) + "\n")
    res = run_cli("infer", "-c", str(cfg), "--input_path", str(src))
    assert_user_error(res, "2 invalid line(s)", "in.jsonl:2", "in.jsonl:4")


def test_missing_input_file(tmp_path, cfg):
    res = run_cli("infer", "-c", str(cfg), "--input_path", str(tmp_path / "nope.jsonl"))
    assert_user_error(res, "nope.jsonl", "not found")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_dir(tmp_path, cfg):
    src = tmp_path / "in.jsonl"
    src.write_text(GOOD + "\n")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    res = run_cli("infer", "-c", str(cfg), "--input_path", str(src), "--output_path", str(locked / "o.jsonl"))
    assert_user_error(res, "not writable")


def test_missing_output_folders_are_created(tmp_path, cfg):
    # issue 10 item 9 (was an error): the README's quick start writes into out/, as Oumi does.
    src = tmp_path / "in.jsonl"
    src.write_text(GOOD + "\n")
    out = tmp_path / "no" / "deeper" / "o.jsonl"
    res = run_cli("infer", "-c", str(cfg), "--input_path", str(src), "--output_path", str(out))
    assert res.returncode == 0, res.stderr
    assert len(out.read_text().splitlines()) == 1


def test_bad_input_creates_no_output_folder(tmp_path, cfg):
    src = tmp_path / "in.jsonl"
    src.write_text("{\n")
    res = run_cli("infer", "-c", str(cfg), "--input_path", str(src), "--output_path", str(tmp_path / "no" / "o.jsonl"))
    assert_user_error(res, "in.jsonl:1")
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("how", ["same", "relative", "symlink", "hardlink"])
def test_output_path_that_is_the_input_is_refused(tmp_path, cfg, how, monkeypatch):
    # issue 10 item 8: the answers would replace the prompts (and failed prompts would be lost).
    src = tmp_path / "data.jsonl"
    text = "\n".join([GOOD] * 5) + "\n"
    src.write_text(text)
    out = {"same": src, "relative": tmp_path / "sub" / ".." / "data.jsonl", "symlink": tmp_path / "link.jsonl",
           "hardlink": tmp_path / "hard.jsonl"}[how]  # fmt: skip
    (tmp_path / "sub").mkdir()
    if how == "symlink":
        out.symlink_to(src)
    elif how == "hardlink":
        os.link(src, out)
    res = run_cli("infer", "-c", str(cfg), "--input_path", str(src), "--output_path", str(out))
    assert_user_error(res, "is the input file")
    assert src.read_text() == text
    assert not list(tmp_path.glob("*.partial.jsonl"))


def test_output_path_is_a_directory(tmp_path, cfg):
    src = tmp_path / "in.jsonl"
    src.write_text(GOOD + "\n")
    res = run_cli("infer", "-c", str(cfg), "--input_path", str(src), "--output_path", str(tmp_path))
    assert_user_error(res, "is a directory")


CONFIGS = {
    "bad_yaml": ("model:\n  model_name: [unclosed\n", ["cfg.yaml:", "invalid YAML"]),
    "unknown_key": ("model:\n  model_name: a\n  modle_kwargs: {}\n", ["cfg.yaml:3", "Did you mean 'model_kwargs'"]),
    "bad_enum": ("engine: LLAMA_CPP\nmodel:\n  model_name: a\n", ["cfg.yaml:1", "unknown engine 'LLAMA_CPP'. Did you mean LLAMACPP?"]),
    "out_of_range": ("model:\n  model_name: a\ngeneration:\n  temperature: -0.5\n", ["cfg.yaml:4", "temperature"]),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_bad_configs(tmp_path, name):
    text, needles = CONFIGS[name]
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    src = tmp_path / "in.jsonl"
    src.write_text(GOOD + "\n")
    for args in (["config", "check", "-c", str(path)], ["infer", "-c", str(path), "--input_path", str(src)]):
        assert_user_error(run_cli(*args), *needles)


def test_bad_override_value(tmp_path, cfg):
    res = run_cli("config", "check", "-c", str(cfg), "--generation.top_p", "2")
    assert_user_error(res, "command line override", "generation.top_p")


def test_debug_log_level_shows_traceback(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("model:\n  model_name: a\n  bogus: 1\n")
    res = run_cli("config", "check", "-c", str(path), "--log-level", "debug")
    assert res.returncode != 0 and "Traceback" in res.stderr


@pytest.mark.parametrize(
    ("command", "typo", "meant"),
    [
        (["infer"], "--input-paht", "--input-path"),
        (["infer"], "--dryrun", "--dry-run"),
        (["serve"], "--prot", "--port"),
        (["config", "check"], "--engin", "--engine"),
        (["batch", "run"], "--outptu_path", "--output_path"),
    ],
)
def test_a_misspelled_option_is_answered_with_the_closest_one(tmp_path, cfg, command, typo, meant):
    res = run_cli(*command, "-c", str(cfg), typo, "x")
    assert_user_error(res, f"unknown option '{typo}'. Did you mean '{meant}'?")
