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


def test_readme_and_remote_tables_are_generated_from_the_engine_rows() -> None:
    from infermux.engines.docs import TABLES, with_tables

    for page in TABLES:
        actual = (ROOT / page).read_text(encoding="utf-8")
        assert actual == with_tables(page, actual), f"{page} is stale: run `python -m infermux.engines.docs --tables`"


def test_the_tables_follow_the_rows(monkeypatch) -> None:
    import dataclasses

    from infermux.configs.engine_type import InferenceEngineType as E
    from infermux.engines import registry
    from infermux.engines.docs import render_provider_table, render_readme_table
    from infermux.engines.remote.openai import providers

    together = dataclasses.replace(providers.PROVIDERS[E.TOGETHER], url="https://example.test/v1", workers=3)
    monkeypatch.setitem(providers.PROVIDERS, E.TOGETHER, together)
    assert "| TOGETHER | `https://example.test/v1` | `TOGETHER_API_KEY` | 3 |" in render_provider_table()
    bedrock = dataclasses.replace(registry.ENGINES["BEDROCK"], runs_on="somewhere else", extra="aws")
    monkeypatch.setitem(registry.ENGINES, "BEDROCK", bedrock)
    assert "| `BEDROCK` | somewhere else | `aws` |" in render_readme_table()
    assert (
        "| `REMOTE`, `REMOTE_VLLM`, `SGLANG` | your own server | — (`native` for `SGLANG`) |" in render_readme_table()
    )
    assert "`GOOGLE_GEMINI` (or `GEMINI`)" in render_readme_table()


def test_a_page_without_its_markers_is_an_error() -> None:
    import pytest

    from infermux.engines.docs import with_tables

    with pytest.raises(ValueError, match="markers of the generated providers table"):
        with_tables("docs/remote.md", "no table here\n")
