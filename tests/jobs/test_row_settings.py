"""Per-row generation settings (a row's ``generation`` object, or a table's column): checked when the input is
read, sent with each row's request, part of its cache key and resume digest, grouped for local engines."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infermux.configs import InferenceConfig
from infermux.errors import InputError
from infermux.jobs import run_config_job
from infermux.jobs.loop import _chunks
from infermux.jobs.rows import InputRow, validate_file
from infermux.types import Conversation
from tests.conftest import run_cli
from tests.fakes.counting import CountingChat

LONG = "one two three four five six seven eight nine ten eleven twelve"


@pytest.fixture
def server() -> Iterator[CountingChat]:
    with CountingChat() as fake:
        assert isinstance(fake, CountingChat)
        yield fake


def _config(server: CountingChat, **extra: Any) -> InferenceConfig:
    remote = {"api_url": server.url + "/v1", "api_key": "sk-test-0000", "num_workers": 4}
    data = {"model": {"model_name": "stub-model"}, "engine": "REMOTE", "generation": {"max_new_tokens": 8},
            "remote_params": remote, **extra}  # fmt: skip
    return InferenceConfig.model_validate(data)


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _row(text: str, **generation: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"messages": [{"role": "user", "content": text}]}
    if generation:
        row["generation"] = generation
    return row


def _bodies(server: CountingChat) -> dict[str, dict[str, Any]]:
    """The request body each prompt was sent with (by the prompt's first word)."""
    out = {}
    for request in server.requests:
        body = json.loads(request.body)
        out[body["messages"][-1]["content"].split()[0]] = body
    return out


def test_rows_are_sent_with_their_own_settings(tmp_path: Path, server: CountingChat) -> None:
    rows = [_row(f"a {LONG}"), _row(f"b {LONG}", temperature=0.9, max_new_tokens=3),
            _row(f"c {LONG}", max_new_tokens=20, stop_strings=["nine"]), _row(f"d {LONG}", seed=7)]  # fmt: skip
    inp, out = _write(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    report = asyncio.run(run_config_job(_config(server, input_path=str(inp), output_path=str(out), cache=False)))
    assert report.done == 4
    bodies = _bodies(server)
    assert bodies["a"]["max_tokens"] == 8 and bodies["a"].get("temperature", 0) == 0  # the job's settings
    assert bodies["b"]["max_tokens"] == 3 and bodies["b"]["temperature"] == 0.9
    assert bodies["c"]["max_tokens"] == 20 and bodies["c"]["stop"] == ["nine"]
    assert bodies["d"]["seed"] == 7 and bodies["d"]["max_tokens"] == 8
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [len(a["messages"][-1]["content"].split()) for a in answers] == [8, 3, 10, 8]  # c: cut at its stop string
    assert answers[1]["generation"] == {"temperature": 0.9, "max_new_tokens": 3}  # kept in the output row
    assert answers[1]["metadata"]["finish_reason"] == "length"


def test_a_bad_setting_fails_its_rows_input_check_with_line_and_field(tmp_path: Path, server: CountingChat) -> None:
    rows = [_row("fine", temperature=0.5), _row("x", temperature=-1), _row("y"), _row("z", temprature=0.5),
            _row("w", max_new_tokens="many"), {**_row("v"), "generation": [1]}, _row("u", batch_size=4)]  # fmt: skip
    inp = _write(tmp_path / "in.jsonl", rows)
    with pytest.raises(InputError) as caught:
        validate_file(inp)
    text = str(caught.value)
    assert "5 invalid line(s)" in text
    assert f"{inp}:2: generation.temperature: Input should be greater than or equal to 0 (got -1)." in text
    assert f"{inp}:4: unknown key 'generation.temprature'. Did you mean 'temperature'?" in text
    assert f"{inp}:5: generation.max_new_tokens: Input should be a valid integer" in text
    assert f"{inp}:6: generation must be an object of generation settings" in text
    assert f"{inp}:7: generation.batch_size: set for the whole job only" in text
    result = run_cli("infer", "--engine", "REMOTE", "--model.model_name", "m", "--remote_params.api_url",
                     server.url + "/v1", "--input_path", str(inp), "--output_path", str(tmp_path / "o.jsonl"))  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"{inp}:2: generation.temperature" in result.stderr
    assert not server.requests  # nothing was sent


def test_settings_count_for_the_cache_and_for_resume(tmp_path: Path, server: CountingChat) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(inp, [_row("same words here"), _row("same words here", max_new_tokens=2), _row("other")])
    config = _config(server, input_path=str(inp), output_path=str(out), cache_path=str(tmp_path / "c.sqlite"))
    assert asyncio.run(run_config_job(config)).done == 3
    assert len(server.seen) == 3  # same messages, other settings: not the first row's cached answer
    assert [json.loads(x)["messages"][-1]["content"] for x in out.read_text().splitlines()][:2] == [
        "echo same words here", "echo same"]  # fmt: skip
    _write(inp, [_row("same words here"), _row("same words here", max_new_tokens=3), _row("other")])
    again = asyncio.run(run_config_job(config))  # an edited setting: that row runs again, with it
    assert again.resumed == 2 and again.done == 1 and len(server.seen) == 4
    assert json.loads(out.read_text().splitlines()[1])["messages"][-1]["content"] == "echo same words"


def test_a_row_that_samples_without_a_seed_is_not_answered_from_the_cache(tmp_path: Path, server: CountingChat) -> None:
    inp = _write(tmp_path / "in.jsonl", [_row("greedy"), _row("hot", temperature=0.9), _row("seeded", temperature=0.9,
                                                                                            seed=3)])  # fmt: skip
    config = _config(server, input_path=str(inp), output_path=str(tmp_path / "a.jsonl"),
                     cache_path=str(tmp_path / "c.sqlite"))  # fmt: skip
    assert asyncio.run(run_config_job(config)).done == 3
    again = asyncio.run(run_config_job(config.model_copy(update={"output_path": str(tmp_path / "b.jsonl")})))
    assert again.cached == 2 and len(server.seen) == 4 and server.seen[3].text == "hot"  # only it was sent again


def test_table_rows_take_a_struct_or_json_settings_column(tmp_path: Path, server: CountingChat) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [{"q": f"s{i} {LONG}", "generation": {"max_new_tokens": i + 1, "temperature": None}} for i in range(3)]
    rows.append({"q": f"s3 {LONG}", "generation": None})  # no settings: the job's
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    config = _config(server, input_path=str(tmp_path / "in.parquet"), output_path=str(tmp_path / "out.parquet"),
                     prompt_column="q")  # fmt: skip
    assert asyncio.run(run_config_job(config)).done == 4
    assert [_bodies(server)[f"s{i}"]["max_tokens"] for i in range(4)] == [1, 2, 3, 8]
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column("generation").to_pylist()[0] == {"max_new_tokens": 1, "temperature": None}  # carried
    assert [len(a.split()) for a in out.column("answer").to_pylist()] == [1, 2, 3, 8]
    texts = [{"q": "t0", "opts": json.dumps({"top_p": 0.5})}, {"q": "t1", "opts": '{"top_p": 2}'}]
    pq.write_table(pa.Table.from_pylist(texts), tmp_path / "t.parquet")
    with pytest.raises(InputError, match=r"row 1\): opts.top_p: Input should be less than or equal to 1"):
        validate_file(tmp_path / "t.parquet", columns=_columns(prompt_column="q", generation_column="opts"))
    with pytest.raises(InputError, match="no column 'nope' for --generation_column"):
        validate_file(tmp_path / "t.parquet", columns=_columns(prompt_column="q", generation_column="nope"))


def _columns(**given: str) -> Any:
    from infermux.jobs.tables import TableColumns

    return TableColumns(**given)


def test_local_chunks_hold_rows_of_equal_settings() -> None:
    def row(i: int, tokens: int | None) -> InputRow:
        extra = {"generation": {"max_new_tokens": tokens}} if tokens else {}
        conv = Conversation.model_validate({"messages": [{"role": "user", "content": str(i)}], **extra})
        return InputRow(index=i, line=i + 1, row_id=str(i), conversation=conv)

    rows = [row(i, [None, 4, 9][i % 3]) for i in range(10)]
    chunks = list(_chunks(rows, 3))
    assert sorted(r.index for c in chunks for r in c) == list(range(10))  # every row once
    for chunk in chunks:
        assert len({json.dumps(r.conversation.model_extra) for r in chunk}) == 1
    assert [[r.index for r in c] for c in chunks][:3] == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
    many = [row(i, i + 1) for i in range(40)]  # every row its own settings: at most 4 chunks' rows wait
    assert len(list(_chunks(many, 3))) == 40


def _local_engine(name: str) -> Any:
    from infermux.configs import GenerationParams, ModelParams

    generation = GenerationParams(max_new_tokens=24, batch_size=4)
    model = "smollm2-135m-instruct"
    if name == "LLAMACPP":
        pytest.importorskip("llama_cpp", reason="LLAMACPP is not installed")
        from infermux.engines.llamacpp.engine import LlamaCppInferenceEngine

        params = ModelParams(model_name=model, model_kwargs={"n_ctx": 1024, "n_seq_max": 4})
        return LlamaCppInferenceEngine(params, generation_params=generation)
    if name == "NATIVE":
        pytest.importorskip("transformers", reason="NATIVE is not installed")
        from infermux.engines.native.engine import NativeTextInferenceEngine

        return NativeTextInferenceEngine(ModelParams(model_name=model), generation_params=generation)
    pytest.importorskip("vllm", reason="VLLM is not installed")
    from infermux.engines.vllm.engine import VLLMInferenceEngine

    params = ModelParams(model_name=model, model_max_length=1024,
                         model_kwargs={"kv_cache_memory_bytes": 512 * 1024**2})  # fmt: skip
    return VLLMInferenceEngine(params, generation_params=generation)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["LLAMACPP", "NATIVE", "VLLM"])
def test_a_local_engine_decodes_each_group_with_its_settings(name: str) -> None:
    story = "Write a long story about a dragon who bakes bread."
    rows = [Conversation.model_validate({"messages": [{"role": "user", "content": story}], **extra})
            for extra in ({}, {"generation": {"max_new_tokens": 3}}, {}, {"generation": {"max_new_tokens": 3}})]  # fmt: skip
    engine = _local_engine(name)
    try:
        answers = engine.infer(rows)
    finally:
        engine.close()
    tokens = [a.usage.completion_tokens if a.usage else None for a in answers]
    assert tokens[1] == tokens[3] == 3 and tokens[0] == tokens[2] and tokens[0] is not None and tokens[0] > 3
    assert answers[0].last_message.text.startswith(answers[1].last_message.text)  # greedy: the same start


def test_a_dry_run_counts_each_rows_own_token_limit(tmp_path: Path, server: CountingChat) -> None:
    from infermux.jobs.plan import plan_job

    inp = _write(tmp_path / "in.jsonl", [_row("a"), _row("b", max_new_tokens=100), _row("c", temperature=1.0)])
    plan = plan_job(_config(server, input_path=str(inp), output_path=str(tmp_path / "o.jsonl"), cache=False))
    assert plan.max_completion_tokens == 8 + 100 + 8 and not server.requests
