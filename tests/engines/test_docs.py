"""docs/engines.md is generated from the engines' declared capabilities and must match them."""

from __future__ import annotations

from pathlib import Path

from infermux.engines.docs import render_engines_markdown
from infermux.engines.registry import ENGINES

ROOT = Path(__file__).resolve().parents[2]


def test_engines_doc_is_current() -> None:
    expected = render_engines_markdown(ROOT)
    actual = (ROOT / "docs" / "engines.md").read_text(encoding="utf-8")
    assert actual == expected, "docs/engines.md is stale: run `python -m infermux.engines.docs > docs/engines.md`"


def test_every_engine_has_a_section_with_its_parameters() -> None:
    text = render_engines_markdown(ROOT)
    for name in ENGINES:
        assert f"\n## {name}\n" in text
    anthropic = text.split("## ANTHROPIC\n", 1)[1].split("\n## ", 1)[0]
    assert "`ANTHROPIC_API_KEY`" in anthropic and "`stop_strings`" in anthropic and "Guided decoding: json" in anthropic
    assert "configs/examples/anthropic.yaml" in anthropic
    bedrock = text.split("## BEDROCK\n", 1)[1].split("\n## ", 1)[0]
    assert "`AWS_REGION`" in bedrock and "pip install 'infermux[bedrock]'" in bedrock


def test_remote_examples_of_this_project_exist() -> None:
    for name in ("anthropic", "gemini", "vertex", "bedrock", "sglang", "openai_batch"):
        assert (ROOT / "configs" / "examples" / f"{name}.yaml").is_file()
