"""Built-in chat templates: each renders the documented format exactly; bad settings fail at config load."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from infermux.configs import load_config
from infermux.configs.model_params import ModelParams
from infermux.errors import ConfigError
from infermux.templates import BUILTIN_TEMPLATES, render_chat_template, resolve_chat_template
from tests.conftest import run_cli

SAMPLE = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
]

EXPECTED = {
    "chat_ml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
    "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nWhat is this?<|im_end|>\n<|im_start|>assistant\n",
    "default": "System: Be brief.\nUser: Hi!\nAssistant: Hello.\nUser: What is this?\nAssistant:",
    "gemma2-it": "<bos><start_of_turn>user\nBe brief.\n\nHi!<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
    "<start_of_turn>user\nWhat is this?<end_of_turn>\n<start_of_turn>model\n",
    "llama3-instruct": "<bos><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    "Hello.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is this?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "llava": "Be brief. USER: Hi! ASSISTANT: Hello.</s>USER: <image>\nWhat is this? ASSISTANT:",
    "phi3-instruct": "<|system|>\nBe brief.<|end|>\n<|user|>\nHi!<|end|>\n<|assistant|>\nHello.<|end|>\n"
    "<|user|>\nWhat is this?<|end|>\n<|assistant|>\n",
    "qwen2-vl-instruct": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
    "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
    "What is this?<|im_end|>\n<|im_start|>assistant\n",
    "zephyr": "<|system|>\nBe brief.</s>\n<|user|>\nHi!</s>\n<|assistant|>\nHello.</s>\n<|user|>\nWhat is this?</s>\n"
    "<|assistant|>\n",
    # the rest of Oumi's list (issue 23, item 14)
    "default_gen": "SYSTEM: Be brief.\nUSER: Hi!\nASSISTANT: Hello.\nUSER: What is this?\nASSISTANT: ",
    "gpt2": "Be brief.</s>Hi!</s>Hello.</s>What is this?</s>",
    "internvl3": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
    "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\n<IMG_CONTEXT>\nWhat is this?<|im_end|>\n"
    "<|im_start|>assistant\n",
    "molmo": None,  # no system turn: see test_molmo_alternates_from_the_user
    "qwen3-vl-instruct": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
    "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
    "What is this?<|im_end|>\n<|im_start|>assistant\n",
}


def test_every_builtin_has_an_expected_rendering() -> None:
    assert set(EXPECTED) == set(BUILTIN_TEMPLATES)


@pytest.mark.parametrize("name", sorted(n for n, text in EXPECTED.items() if text is not None))
def test_builtin_renders_the_documented_format(name: str) -> None:
    assert render_chat_template(name, SAMPLE, bos_token="<bos>", eos_token="</s>") == EXPECTED[name]


def test_molmo_alternates_from_the_user() -> None:
    assert render_chat_template("molmo", SAMPLE[1:]) == "User: Hi! Assistant: Hello. User: What is this? Assistant:"
    assert render_chat_template("molmo", SAMPLE[1:2], add_generation_prompt=False) == "User: Hi!"
    with pytest.raises(ValueError, match="molmo takes turns that alternate"):
        render_chat_template("molmo", SAMPLE)


OUMI_TEMPLATE_NAMES = [  # every file in Oumi's src/oumi/datasets/chat_templates, and its `auto`
    "auto", "chat_ml", "default", "default_gen", "gemma2-it", "gpt2", "internvl3", "llama3-instruct", "llava",
    "molmo", "phi3-instruct", "qwen2-vl-instruct", "qwen3-vl-instruct", "zephyr",
]  # fmt: skip


@pytest.mark.parametrize("name", OUMI_TEMPLATE_NAMES)
def test_every_name_oumi_accepts_loads(name: str) -> None:
    assert ModelParams(model_name="m", chat_template=name).chat_template == name
    resolved = resolve_chat_template(name)
    assert (resolved is None) if name == "auto" else bool(resolved)


def test_auto_is_the_models_own_template() -> None:
    assert resolve_chat_template("auto") is None and resolve_chat_template("AUTO") is None
    with pytest.raises(ValueError, match="the model's own template"):
        render_chat_template("auto", SAMPLE)


def test_without_generation_prompt_and_without_system() -> None:
    turns = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}]
    assert render_chat_template("chat_ml", turns, add_generation_prompt=False) == (
        "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
    )
    # Qwen2-VL adds its default system message; Gemma has no system turn to drop.
    assert render_chat_template("qwen2-vl-instruct", turns[:1]).startswith(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi!"
    )
    assert (
        render_chat_template("gemma2-it", turns[:1]) == "<start_of_turn>user\nHi!<end_of_turn>\n<start_of_turn>model\n"
    )


def test_gemma_refuses_a_second_system_message() -> None:
    with pytest.raises(ValueError, match="gemma2-it takes user and assistant turns"):
        render_chat_template("gemma2-it", [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}])


def test_names_are_matched_ignoring_case_and_dash_or_underscore() -> None:
    assert resolve_chat_template("CHAT-ML") == BUILTIN_TEMPLATES["chat_ml"]
    assert resolve_chat_template("llama3_instruct") == BUILTIN_TEMPLATES["llama3-instruct"]


def test_template_text_and_files_are_used_as_given(tmp_path: Path) -> None:
    inline = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert resolve_chat_template(inline) == inline
    path = tmp_path / "t.jinja"
    path.write_text(inline)
    assert resolve_chat_template(str(path)) == inline
    assert ModelParams(model_name="m", chat_template=str(path)).chat_template == str(path)
    assert resolve_chat_template(None) is None


@pytest.mark.parametrize(
    ("value", "expect"),
    [
        ("llama3-instrct", "Did you mean 'llama3-instruct'?"),
        ("my-own-format", "neither a built-in template name, a Jinja template"),
        ("templates/missing.jinja", "no file at 'templates/missing.jinja'"),
        ("qwen3-instruct", "one of Oumi's templates that infermux does not ship"),
    ],
)
def test_a_value_that_is_neither_name_template_nor_file_is_refused(value: str, expect: str) -> None:
    with pytest.raises(ValueError, match=expect):
        ModelParams(model_name="m", chat_template=value)
    with pytest.raises(ConfigError, match=expect):
        resolve_chat_template(value)


def test_config_load_names_the_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        textwrap.dedent("""\
        model:
          model_name: smollm2-135m-instruct
          chat_template: llama3-instrct
        """)
    )
    with pytest.raises(ConfigError, match=rf"{config}:3: model.chat_template: .*Did you mean 'llama3-instruct'"):
        load_config(config)
    assert load_config(config, ["model.chat_template=llama3-instruct"]).model.chat_template == "llama3-instruct"


def test_cli_refuses_a_bad_template_before_loading_anything(tmp_path: Path) -> None:
    rows = tmp_path / "in.jsonl"
    rows.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    out = tmp_path / "out.jsonl"
    result = run_cli(
        "infer", "--input_path", str(rows), "--output_path", str(out), "--model.chat_template", "llama3-instrct"
    )
    assert result.returncode == 2, result.stderr
    assert "model.chat_template" in result.stderr and "Did you mean 'llama3-instruct'?" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def test_importing_the_module_does_not_import_jinja() -> None:
    code = "import sys, infermux.templates, infermux.configs; print('jinja2' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


@pytest.mark.parametrize("name", ["auto", "gpt2", "qwen3-vl-instruct"])
def test_config_check_accepts_the_names_in_oumis_configs(tmp_path: Path, name: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"model:\n  model_name: smollm2-135m-instruct\n  chat_template: {name}\nengine: NATIVE\n")
    result = run_cli("config", "check", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert f"chat_template: {name}" in result.stdout
