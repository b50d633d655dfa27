"""Forced calls (``tool_choice`` required or named) with pydantic-style ``$defs``/``$ref`` parameter schemas.

Every wrapper schema of every engine (NATIVE and LLAMACPP: :func:`forced_call_schema`; VLLM:
:func:`forced_schema`) must keep the tools' references resolvable, accept the calls the tools accept and
refuse the others, and LLAMACPP must turn it into a grammar (no model is loaded: the grammar is built
from the schema alone).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jsonschema
import pytest

from infermux.configs import GenerationParams, GuidedDecodingParams
from infermux.engines.local.tool_prompting import forced_call_schema
from infermux.engines.tool_calls import forced_schema
from infermux.types import Tool

# What pydantic writes for ``class Order(BaseModel): address: Address; items: list[Item]`` (and a tree
# that refers to itself with ``#``, which JSON Schema allows).
ORDER = {
    "$defs": {
        "Address": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "Item": {"type": "object", "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}},
                 "required": ["sku", "qty"]},
    },
    "type": "object",
    "properties": {"address": {"$ref": "#/$defs/Address"}, "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}}},
    "required": ["address", "items"],
}  # fmt: skip
NOTE = {  # another tool whose definitions share a name with ORDER's, under the older keyword
    "definitions": {"Address": {"type": "object", "properties": {"email": {"type": "string"}}, "required": ["email"]}},
    "type": "object",
    "properties": {"to": {"$ref": "#/definitions/Address"}, "reply": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}},
    "required": ["to", "reply"],
}
TOOLS = [
    Tool.model_validate({"type": "function", "function": {"name": "place_order", "parameters": ORDER}}),
    Tool.model_validate({"type": "function", "function": {"name": "send_note", "parameters": NOTE}}),
]
GOOD_ORDER = {"address": {"city": "Oslo"}, "items": [{"sku": "a1", "qty": 2}]}
GOOD_NOTE = {"to": {"email": "a@b.c"}, "reply": {"to": {"email": "d@e.f"}, "reply": None}}
NAMED = {"type": "function", "function": {"name": "send_note"}}


def _wrapped(calls: list[tuple[str, Any]], key: str, generation: GenerationParams) -> Any:
    items = [{"name": name, key: arguments} for name, arguments in calls]
    if generation.forced_tool is not None or (not generation.parallel_tool_calls and key == "arguments"):
        return items[0]
    return items


CASES: list[tuple[str, Callable[..., Any], str, GenerationParams]] = [
    ("native/llamacpp required", forced_call_schema, "arguments", GenerationParams(tool_choice="required")),
    ("native/llamacpp one call", forced_call_schema, "arguments",
     GenerationParams(tool_choice="required", parallel_tool_calls=False)),
    ("native/llamacpp named", forced_call_schema, "arguments", GenerationParams(tool_choice=NAMED)),
    ("vllm required", forced_schema, "parameters", GenerationParams(tool_choice="required")),
    ("vllm named", forced_schema, "parameters", GenerationParams(tool_choice=NAMED)),
]  # fmt: skip


def _refs(node: Any) -> list[str]:
    if isinstance(node, list):
        return [r for item in node for r in _refs(item)]
    if not isinstance(node, dict):
        return []
    own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
    return own + [r for value in node.values() for r in _refs(value)]


def _resolve(schema: dict[str, Any], ref: str) -> Any:
    target: Any = schema
    for part in ref.removeprefix("#").split("/")[1:]:
        target = target[part]
    return target


@pytest.mark.parametrize(("label", "build", "key", "generation"), CASES, ids=[c[0] for c in CASES])
def test_wrapper_schemas_keep_references_resolvable_and_judge_calls_like_the_tools(
    label: str, build: Callable[..., Any], key: str, generation: GenerationParams
) -> None:
    schema = build(TOOLS, generation)
    for ref in _refs(schema):
        assert isinstance(_resolve(schema, ref), dict), (label, ref)  # every reference points into the schema
    validator = jsonschema.Draft202012Validator(schema)
    if generation.forced_tool is not None:
        if key == "parameters":  # VLLM's named call is the parameters themselves
            assert validator.is_valid(GOOD_NOTE) and not validator.is_valid({"to": {"city": "Oslo"}, "reply": None})
            return
        good, bad = [("send_note", GOOD_NOTE)], [("send_note", {"to": {"email": "x"}, "reply": {"to": {}}})]
    else:
        good, bad = [("place_order", GOOD_ORDER)], [("place_order", {"address": {"email": "x"}, "items": []})]
        if generation.parallel_tool_calls:
            good.append(("send_note", GOOD_NOTE))
    assert validator.is_valid(_wrapped(good, key, generation)), label
    assert not validator.is_valid(_wrapped(bad, key, generation)), label


@pytest.mark.parametrize("generation", [c[3] for c in CASES[:3]], ids=[c[0] for c in CASES[:3]])
def test_llamacpp_turns_every_forced_wrapper_into_a_grammar(generation: GenerationParams) -> None:
    pytest.importorskip("llama_cpp")
    from infermux.engines.llamacpp.grammar import grammar_for

    schema = forced_call_schema(TOOLS[:1] if generation.forced_tool is None else TOOLS, generation)
    assert schema is not None
    grammar = grammar_for(GuidedDecodingParams(json=schema))
    assert "root ::=" in grammar and ("email" if generation.forced_tool else "city") in grammar  # the $defs reached
