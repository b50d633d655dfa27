import logging
import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel

from infermux.configs import GenerationParams, GuidedDecodingParams, InferenceConfig, InferenceEngineType, load_config
from infermux.configs.model_params import ModelParams
from infermux.configs.remote_params import RemoteParams
from infermux.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(textwrap.dedent(text))
    return path


SPEC_EXAMPLE = """
model:  # Model settings
  model_name: "meta-llama/Llama-3.1-8B-Instruct"
  trust_remote_code: true
  model_kwargs:
    device_map: "auto"
    torch_dtype: "float16"

generation:  # Generation parameters
  max_new_tokens: 100
  temperature: 0.7
  top_p: 0.9
  batch_size: 1

engine: "VLLM"

remote_params:  # Optional remote settings
  api_url: "https://api.example.com/v1"
  api_key: "${API_KEY}"
  connection_timeout: 20.0
"""


def test_spec_example_loads_with_env_interpolation(tmp_path, monkeypatch):
    monkeypatch.setenv("API_KEY", "sk-secret-123")
    cfg = load_config(write(tmp_path, SPEC_EXAMPLE))
    assert cfg.engine is InferenceEngineType.VLLM
    assert cfg.model.model_kwargs == {"device_map": "auto", "torch_dtype": "float16"}
    assert cfg.generation.temperature == 0.7
    assert cfg.remote_params is not None
    assert cfg.remote_params.resolve_api_key() == "sk-secret-123"
    assert "sk-secret-123" not in repr(cfg) and "sk-secret-123" not in str(cfg.model_dump())


def test_missing_env_var_names_it_and_the_line(tmp_path, monkeypatch):
    monkeypatch.delenv("API_KEY", raising=False)
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, SPEC_EXAMPLE))
    assert "cfg.yaml:19" in str(err.value) and "API_KEY" in str(err.value)


def test_env_default_and_oc_env_syntax(tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL", "m1")
    cfg = load_config(
        write(
            tmp_path,
            """
            model:
              model_name: ${oc.env:MODEL}
              tokenizer_name: ${UNSET_VAR_X:-tok}
            """,
        )
    )
    assert cfg.model.model_name == "m1" and cfg.model.tokenizer_name == "tok"


def test_dotted_overrides_are_yaml_typed(tmp_path):
    cfg = load_config(
        write(tmp_path, "model:\n  model_name: a\n"),
        [
            "--model.model_name", "X",
            "--generation.max_new_tokens", "5",
            "--model.model_kwargs.tensor_parallel_size", "4",
            "--remote_params.num_workers=10",
            "--generation.stop_strings", "[a, b]",
            "--generation.seed=null",
        ],
    )  # fmt: skip
    assert cfg.model.model_name == "X"
    assert cfg.generation.max_new_tokens == 5
    assert cfg.model.model_kwargs == {"tensor_parallel_size": 4}
    assert cfg.remote_params is not None and cfg.remote_params.num_workers == 10
    assert cfg.generation.stop_strings == ["a", "b"]
    assert cfg.generation.seed is None


def test_unknown_key_names_file_line_and_suggestion(tmp_path):
    path = write(tmp_path, "model:\n  model_name: a\ngeneration:\n  max_new_token: 5\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert f"{path}:4" in msg and "generation.max_new_token" in msg and "Did you mean 'max_new_tokens'" in msg


def test_every_unknown_key_is_reported_at_once(tmp_path):
    path = write(tmp_path, "model:\n  model_nmae: x\ngeneration:\n  temprature: 0.1\nremote_param:\n  num_workers: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert msg.startswith("3 unknown keys:")
    assert f"{path}:2" in msg and "Did you mean 'model_name'" in msg
    assert f"{path}:4" in msg and "Did you mean 'temperature'" in msg
    assert f"{path}:5" in msg and "Did you mean 'remote_params'" in msg


def test_unknown_override_key_is_reported(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "model:\n  model_name: a\n"), ["--model.modle_name", "b"])
    assert "command line" in str(err.value) and "model_name" in str(err.value)


def test_oumi_only_keys_are_accepted_and_reported(tmp_path, caplog):
    path = write(tmp_path, "model:\n  model_name: a\n  shard_for_eval: true\n  freeze_layers: [x]\n")
    with caplog.at_level(logging.WARNING, logger="infermux"):
        cfg = load_config(path)
    assert cfg.model.model_name == "a"
    assert "shard_for_eval" in caplog.text and "ignored" in caplog.text


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("engine: VLLMX\nmodel:\n  model_name: a\n", "unknown engine"),
        ("model:\n  model_name: a\ngeneration:\n  temperature: -1\n", "generation.temperature"),
        ("model:\n  model_name: a\ngeneration:\n  top_p: 1.5\n", "generation.top_p"),
        ("model:\n  model_name: a\ngeneration:\n  batch_size: 0\n", "generation.batch_size"),
        ("model:\n  model_name: a\n  torch_dtype_str: float8\n", "unknown dtype"),
        ("model:\n  model_name: [a\n", "invalid YAML"),
        ("- a\n- b\n", "must be a mapping"),
    ],
)
def test_bad_values_give_clear_errors(tmp_path, text, expect):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert expect in str(err.value)
    assert "cfg.yaml" in str(err.value)


def test_bad_value_error_names_line(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "model:\n  model_name: a\ngeneration:\n  top_p: 1.5\n"))
    assert "cfg.yaml:4" in str(err.value)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent/cfg.yaml")


def test_engine_is_case_insensitive_and_defaults_follow_model(tmp_path):
    assert load_config(None, ["engine=native", "model.model_name=x"]).engine is InferenceEngineType.NATIVE
    assert InferenceConfig().resolved_engine() is InferenceEngineType.LLAMACPP
    assert InferenceConfig(model=ModelParams(model_name="org/m")).resolved_engine() is InferenceEngineType.NATIVE


def test_guided_decoding_forms_and_exclusivity():
    class Answer(BaseModel):
        city: str

    assert GuidedDecodingParams(json=Answer).schema_dict()["properties"]["city"]["type"] == "string"
    assert GuidedDecodingParams(json='{"type": "object"}').schema_dict() == {"type": "object"}
    # An instance stands for its class's schema, in requests and in fingerprints alike.
    by_instance = GuidedDecodingParams(json=Answer(city="Paris"))
    assert by_instance.schema_dict() == Answer.model_json_schema()
    assert by_instance.model_dump_json() == GuidedDecodingParams(json=Answer).model_dump_json()
    assert GuidedDecodingParams(regex="[0-9]+").kind == "regex"
    assert GuidedDecodingParams(choice=["yes", "no"]).kind == "choice"
    with pytest.raises(ValueError, match="exactly one"):
        GuidedDecodingParams(regex="a", choice=["a"])
    with pytest.raises(ValueError, match="exactly one"):
        GuidedDecodingParams()
    gen = load_config(None, ["model.model_name=x", "generation.guided_decoding.json={type: object}"]).generation
    assert gen.guided_decoding is not None and gen.guided_decoding.kind == "json"


def test_fingerprint_ignores_secrets_and_throughput_but_not_outputs():
    base = InferenceConfig(model=ModelParams(model_name="m"), remote_params=RemoteParams(api_url="http://x"))
    same = base.model_copy(deep=True)
    same.remote_params = RemoteParams(api_url="http://x", api_key="k", num_workers=50, max_retries=9)
    same.generation = GenerationParams(batch_size=64)
    assert base.fingerprint() == same.fingerprint()
    other = base.model_copy(deep=True)
    other.generation = GenerationParams(temperature=0.5)
    assert base.fingerprint() != other.fingerprint()
    assert base.fingerprint() != base.model_copy(update={"model": ModelParams(model_name="m2")}).fingerprint()


def test_api_key_never_in_repr_or_dump():
    params = RemoteParams(api_key="sk-very-secret")
    assert "sk-very-secret" not in repr(params)
    assert "sk-very-secret" not in params.model_dump_json()
    assert params.resolve_api_key() == "sk-very-secret"


def test_every_example_config_loads(monkeypatch):
    monkeypatch.setenv("API_KEY", "x")
    examples = sorted((ROOT / "configs" / "examples").glob("*.yaml"))
    assert examples, "configs/examples must hold example configs"
    for path in examples:
        load_config(path)


def test_configuration_doc_is_current():
    from infermux.configs.reference import BEGIN, END, render_reference

    text = (ROOT / "docs" / "configuration.md").read_text()
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert block == "\n" + render_reference(), "run: python -m infermux.configs.reference docs/configuration.md"


def test_misspelled_keys_and_out_of_range_values_are_reported_in_one_round(tmp_path):
    """The issue's config: two typos and two values out of range, all four in one error."""
    path = write(
        tmp_path,
        "model:\n  model_nmae: x\ngeneration:\n  max_new_token: 5\n  temperature: -0.5\n  top_p: 1.5\n",
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert msg.startswith("2 unknown keys:")
    assert f"{path}:2" in msg and "Did you mean 'model_name'" in msg
    assert f"{path}:4" in msg and "Did you mean 'max_new_tokens'" in msg
    assert f"{path}:5: generation.temperature" in msg and "(got -0.5)" in msg
    assert f"{path}:6: generation.top_p" in msg and "(got 1.5)" in msg
    assert "model.model_name: Field required" not in msg  # the typo's line already says it


def test_a_misspelled_option_gets_the_closest_one():
    from infermux.configs.loader import parse_overrides

    with pytest.raises(ConfigError, match=r"unknown option '--input-paht'\. Did you mean '--input-path'\?"):
        parse_overrides(["--input-paht", "x.jsonl"], ["--input_path", "--input-path", "--output_path"])
    with pytest.raises(ConfigError, match=r"Did you mean '--max_cost'\?"):
        parse_overrides(["--max-cst", "5"])  # a config key, without the command's options
