"""JSON-schema rewriting for providers with a schema subset (Gemini)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from infermux.engines.remote.json_schema import close_objects, inline_refs, to_gemini_schema


class Item(BaseModel):
    name: str
    price: float | None = None


class Order(BaseModel):
    items: list[Item]
    gift: Item | None = None
    status: str = "new"


def test_inline_refs_replaces_every_ref_and_drops_defs() -> None:
    schema = Order.model_json_schema()
    inlined = inline_refs(schema)
    assert "$defs" not in inlined and "$ref" not in str(inlined)
    assert inlined["properties"]["items"]["items"]["properties"]["name"] == {"title": "Name", "type": "string"}
    assert schema["$defs"]  # the input is not modified


def test_recursive_and_dangling_refs_are_clear_errors() -> None:
    recursive = {"$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}},
                 "$ref": "#/$defs/Node"}  # fmt: skip
    with pytest.raises(ValueError, match="recursive"):
        inline_refs(recursive)
    with pytest.raises(ValueError, match="does not define"):
        inline_refs({"$ref": "#/$defs/Missing"})


def test_gemini_schema_subset() -> None:
    gemini = to_gemini_schema(Order.model_json_schema())
    assert gemini["type"] == "OBJECT" and gemini["propertyOrdering"] == ["items", "gift", "status"]
    gift = gemini["properties"]["gift"]
    assert gift["nullable"] is True and gift["type"] == "OBJECT" and "anyOf" not in gift
    price = gemini["properties"]["items"]["items"]["properties"]["price"]
    assert price["type"] == "NUMBER" and price["nullable"] is True
    assert gemini["properties"]["status"]["default"] == "new"


def test_gemini_schema_rewrites_json_schema_only_keywords() -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "kind": {"const": "a"},
            "n": {"type": ["integer", "null"]},
            "v": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
        },
    }
    gemini = to_gemini_schema(schema)
    assert "additionalProperties" not in gemini and "$schema" not in gemini
    assert gemini["properties"]["kind"] == {"enum": ["a"], "type": "STRING"}
    assert gemini["properties"]["n"] == {"type": "INTEGER", "nullable": True}
    assert gemini["properties"]["v"]["anyOf"] == [{"type": "STRING"}, {"type": "INTEGER"}]
    with pytest.raises(ValueError, match="one type"):
        to_gemini_schema({"type": ["string", "integer"]})


def test_close_objects_forbids_extra_keys_unless_the_schema_says_otherwise() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}}, "c": {"enum": [{"x": 1}]}},
        "$defs": {"D": {"type": "object", "additionalProperties": True}},
    }
    closed = close_objects(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["a"]["additionalProperties"] is False
    assert closed["$defs"]["D"]["additionalProperties"] is True
    assert closed["properties"]["c"] == {"enum": [{"x": 1}]}  # values are data, not schemas
    assert "additionalProperties" not in schema
