"""Declared capabilities the CLI reads instead of duck typing."""

from __future__ import annotations

from infermux.engines.registry import engine_class


def test_batch_api_is_a_declared_capability() -> None:
    offered = {"OPENAI", "REMOTE", "REMOTE_VLLM", "TOGETHER", "DEEPSEEK", "SAMBANOVA", "PARASAIL", "LAMBDA"}
    for name in offered:
        assert engine_class(name).capabilities.batch_api, name
    for name in ("GOOGLE_VERTEX", "ANTHROPIC", "GOOGLE_GEMINI", "SGLANG"):
        assert not engine_class(name).capabilities.batch_api, name
