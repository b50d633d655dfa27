"""JSON-schema rewriting for providers that accept only a subset of JSON Schema.

* :func:`inline_refs` replaces every local ``$ref`` (``#/$defs/...``, ``#/definitions/...``) by the
  schema it points to and drops the definitions; a recursive schema cannot be inlined and raises
  ``ValueError`` naming the cycle.
* :func:`close_objects` sets ``additionalProperties: false`` on every object that leaves it open
  (Anthropic's structured outputs require closed objects).
* :func:`to_gemini_schema` turns a JSON schema (for example a pydantic model's) into the OpenAPI
  subset of Gemini's ``Schema`` message: ``$ref`` inlined, ``["string", "null"]`` types become
  ``nullable``, ``const`` becomes a one-value ``enum``, single-branch ``allOf`` is merged, and
  keywords Gemini does not know (``additionalProperties``, ``$schema``, ...) are dropped.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["close_objects", "inline_refs", "to_gemini_schema"]

_GEMINI_KEYS = frozenset({
    "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
    "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
    "pattern", "example", "anyOf", "propertyOrdering", "default", "items", "minimum", "maximum",
})  # fmt: skip


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with local ``$ref``s replaced by their targets and ``$defs``/``definitions`` removed."""
    root = copy.deepcopy(schema)
    defs: dict[str, Any] = {}
    for key in ("$defs", "definitions"):
        for name, sub in (root.pop(key, None) or {}).items():
            defs[f"#/{key}/{name}"] = sub

    def walk(node: Any, trail: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [walk(item, trail) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str):
            if ref in trail:
                cycle = " -> ".join((*trail[trail.index(ref) :], ref))
                raise ValueError(f"the JSON schema is recursive ({cycle}); this provider needs it inlined")
            if ref not in defs:
                raise ValueError(f"the JSON schema refers to {ref!r}, which it does not define")
            target = walk(defs[ref], (*trail, ref))
            siblings = {k: walk(v, trail) for k, v in node.items() if k != "$ref"}
            return {**target, **siblings}
        return {k: walk(v, trail) for k, v in node.items() if k not in ("$defs", "definitions")}

    result: dict[str, Any] = walk(root, ())
    return result


def to_gemini_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A Gemini ``responseSchema`` equivalent to the JSON schema ``schema``."""
    return _convert(inline_refs(schema))


def _convert(node: dict[str, Any]) -> dict[str, Any]:
    node = dict(node)
    all_of = node.pop("allOf", None)
    if all_of:
        if len(all_of) != 1:
            raise ValueError("Gemini response schemas cannot express allOf with several branches")
        node = {**all_of[0], **node}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "oneOf" in node:
        node["anyOf"] = node.pop("oneOf")
    kind = node.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        if len(kinds) != 1:
            raise ValueError(f"Gemini response schemas take one type per value, got {kind}")
        node["type"] = kinds[0]
        if len(kinds) < len(kind):
            node["nullable"] = True
    any_of = node.get("anyOf")
    if any_of:
        branches = [b for b in any_of if b.get("type") != "null"]
        if len(branches) < len(any_of):
            node["nullable"] = True
        if len(branches) == 1:
            node.pop("anyOf")
            node = {**branches[0], **node}
        else:
            node["anyOf"] = branches
    if "enum" in node and "type" not in node:
        node["type"] = "string"
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key not in _GEMINI_KEYS:
            continue
        if key == "properties":
            out[key] = {name: _convert(sub) for name, sub in value.items()}
            out.setdefault("propertyOrdering", list(value))
        elif key == "items":
            out[key] = _convert(value)
        elif key == "anyOf":
            out[key] = [_convert(branch) for branch in value]
        elif key == "type":
            out[key] = str(value).upper()
        else:
            out[key] = value
    return out


def close_objects(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` where every object schema without ``additionalProperties`` forbids extras."""

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(item) for item in node]
        if not isinstance(node, dict):
            return node
        out = {k: walk(v) if k not in ("enum", "const", "default", "examples") else v for k, v in node.items()}
        if (out.get("type") == "object" or "properties" in out) and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out

    result: dict[str, Any] = walk(schema)
    return result
