"""The public surface: what users and plugin authors import from ``infermux`` (pinned: a change here is
a change of the API, made on purpose)."""

from __future__ import annotations

import subprocess
import sys

import infermux
import infermux.configs
import infermux.inference
import infermux.types

PUBLIC = [
    # data and configs
    "Conversation", "ContentItem", "Message", "Role", "Tool", "ToolCall", "Usage", "FinishReason",
    "GenerationParams", "GuidedDecodingParams",
    "InferenceConfig", "InferenceEngineType", "ModelParams", "RemoteParams", "load_config",
    # engines and jobs
    "build_engine", "InferenceEngine", "Capabilities", "BatchReport",
    # errors (a failed row is a RowError; the rest are raised)
    "RowError", "ErrorKind", "InfermuxError", "ConfigError", "InputError", "OutputError", "EngineUnavailableError",
    "UnsupportedParamError", "ModelNotFoundError", "RemoteError", "AuthenticationError",
    "__version__",
]  # fmt: skip


def test_top_level_names_are_pinned() -> None:
    assert sorted(infermux.__all__) == sorted(PUBLIC)
    for name in infermux.__all__:
        assert getattr(infermux, name) is not None
    assert sorted(dir(infermux)) == sorted(PUBLIC)


def test_plugin_author_names_are_the_real_classes() -> None:
    from infermux.engines.base import InferenceEngine
    from infermux.engines.capabilities import Capabilities
    from infermux.errors import InfermuxError, RemoteError, RowError

    assert infermux.InferenceEngine is InferenceEngine
    assert infermux.Capabilities is Capabilities
    assert infermux.RowError is RowError
    assert issubclass(infermux.AuthenticationError, RemoteError)
    assert all(
        issubclass(getattr(infermux, n), InfermuxError)
        for n in PUBLIC
        if n.endswith("Error") and n not in ("RowError", "ErrorKind")
    )


def test_oumi_named_modules_keep_their_names() -> None:
    assert set(infermux.types.__all__) >= {"Conversation", "ContentItem", "Message", "Role", "Type"}
    assert "NativeTextInferenceEngine" in infermux.inference.__all__
    assert "AnthropicInferenceEngine" in infermux.inference.__all__
    engines = [n for n in infermux.inference.__all__ if n.endswith("InferenceEngine") and n != "InferenceEngine"]
    assert len(engines) == 20  # 16 + FIREWORKS, OPENROUTER, CEREBRAS, HUGGING_FACE_ROUTER (issue 11)
    assert {"InferenceConfig", "ModelParams", "GenerationParams", "RemoteParams"} <= set(infermux.configs.__all__)


def test_public_names_import_lazily() -> None:
    code = "import sys, infermux; infermux.InferenceEngine; infermux.RowError; print(sorted(sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = res.stdout
    for heavy in ("torch", "transformers", "vllm", "llama_cpp", "aiohttp", "boto3"):
        assert f"'{heavy}'" not in loaded, heavy
