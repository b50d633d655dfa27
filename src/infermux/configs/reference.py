"""Render the configuration reference (docs/configuration.md's field tables) from the models."""

from __future__ import annotations

import json
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from infermux.configs._base import ConfigModel
from infermux.configs.distributed_params import DistributedParams
from infermux.configs.endpoint_params import EndpointParams
from infermux.configs.fallback_params import FallbackConfig
from infermux.configs.generation_params import GenerationParams, GuidedDecodingParams
from infermux.configs.inference_config import InferenceConfig
from infermux.configs.model_params import ModelParams
from infermux.configs.remote_params import RemoteParams

SECTIONS: list[tuple[str, type[ConfigModel]]] = [
    ("(top level)", InferenceConfig),
    ("model", ModelParams),
    ("generation", GenerationParams),
    ("generation.guided_decoding", GuidedDecodingParams),
    ("remote_params", RemoteParams),
    ("remote_params.endpoints[]", EndpointParams),
    ("fallbacks[]", FallbackConfig),
    ("distributed", DistributedParams),
]


def _default(info: FieldInfo) -> str:
    if info.default is PydanticUndefined:
        return "required" if info.default_factory is None else "section defaults"
    value: Any = info.default
    if hasattr(value, "value"):
        value = value.value
    return "`" + json.dumps(value) + "`"


def _bounds(info: FieldInfo) -> str:
    parts = []
    for meta in info.metadata:
        for attr, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if getattr(meta, attr, None) is not None:
                parts.append(f"{sym} {getattr(meta, attr)}")
    return ", ".join(parts)


def render_reference() -> str:
    out = []
    for title, cls in SECTIONS:
        out.append(f"### `{title}`\n")
        out.append("| field | default | bounds | meaning |")
        out.append("|---|---|---|---|")
        for name, info in cls.model_fields.items():
            shown = info.alias or name
            doc = (info.description or "").replace("\n", " ").replace("|", "\\|")
            out.append(f"| `{shown}` | {_default(info)} | {_bounds(info)} | {doc} |")
        if cls.oumi_ignored:
            ignored = ", ".join(f"`{k}`" for k in sorted(cls.oumi_ignored))
            out.append(f"\nAccepted for Oumi compatibility and ignored (a warning says so): {ignored}.")
        out.append("")
    return "\n".join(out)


BEGIN = "<!-- BEGIN GENERATED: python -m infermux.configs.reference docs/configuration.md -->"
END = "<!-- END GENERATED -->"


def update_file(path: str) -> bool:
    """Rewrite the generated block of ``path``; return whether it changed."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{render_reference()}{END}{tail}"
    if new != text:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(new)
    return new != text


if __name__ == "__main__":
    import sys

    update_file(sys.argv[1] if len(sys.argv) > 1 else "docs/configuration.md")
