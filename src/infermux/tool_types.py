"""Tools offered to a model and the calls it makes, in OpenAI's chat shape (which Oumi's types use).

Re-exported by :mod:`infermux.types`; import them from there. Keys these models do not declare are
kept and written back unchanged (providers extend the format; transformers' ``get_json_schema`` adds a
``return`` block).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, field_validator
from pydantic_core import core_schema

__all__ = ["FunctionCall", "FunctionDefinition", "JSONSchema", "Tool", "ToolCall"]

_SCHEMA_TYPES = frozenset({"object", "string", "number", "integer", "boolean", "array", "null"})


class JSONSchema(dict[str, Any]):
    """A JSON schema (a tool's ``parameters``): a plain ``dict`` holding exactly the keys it was given, in
    their order, with Oumi's typed attribute access on top (``parameters.required``,
    ``parameters.properties["city"].type``; a keyword not given reads as None).

    Being a dict, it goes into request bodies and JSON as it is. ``items`` is the dict method (JSON
    encoders call it): the schema of an array's items is ``schema["items"]`` or ``schema.items_schema``.
    Nested schemas (under ``properties``, ``items``, ``anyOf``, ...) are JSONSchema too.
    """

    __slots__ = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for key, value in dict.items(self):
            if key in _SUBSCHEMA_MAPS and isinstance(value, dict):
                dict.__setitem__(self, key, {k: _schema(v) for k, v in value.items()})
            elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
                dict.__setitem__(self, key, [_schema(v) for v in value])
            elif key in _SUBSCHEMAS:
                dict.__setitem__(self, key, _schema(value))

    @classmethod
    def validate(cls, value: Any) -> JSONSchema:
        """``value`` (a dict) as a JSONSchema; a top-level ``type`` outside JSON schema's seven is refused."""
        if not isinstance(value, dict):
            raise ValueError(f"a JSON schema must be an object, not {type(value).__name__}")
        schema = value if type(value) is cls else cls(value)
        _check_types(schema, "parameters")
        return schema

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls.validate, serialization=core_schema.plain_serializer_function_ser_schema(dict)
        )

    def __getattr__(self, name: str) -> Any:
        """A keyword given in the schema that has no typed property here (``additionalProperties``, ...)."""
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"JSONSchema has no {name!r}") from None

    def __repr__(self) -> str:
        return f"JSONSchema({dict.__repr__(self)})"

    # The keywords Oumi's JSONSchema declares, typed (any other key reads through ``__getattr__``).
    @property
    def type(self) -> str | list[str] | None:
        return self.get("type")

    @property
    def description(self) -> str | None:
        return self.get("description")

    @property
    def title(self) -> str | None:
        return self.get("title")

    @property
    def properties(self) -> dict[str, JSONSchema] | None:
        return self.get("properties")

    @property
    def required(self) -> list[str] | None:
        return self.get("required")

    @property
    def items_schema(self) -> JSONSchema | None:
        """The schema of an array's items (``"items"``; ``.items`` is the dict method)."""
        return self.get("items")

    @property
    def enum(self) -> list[Any] | None:
        return self.get("enum")

    @property
    def default(self) -> Any:
        return self.get("default")

    @property
    def format(self) -> str | None:
        return self.get("format")


_SUBSCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions"})
_SUBSCHEMA_LISTS = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})
_SUBSCHEMAS = frozenset({"items", "additionalProperties", "not"})


def _schema(value: Any) -> Any:
    return JSONSchema(value) if isinstance(value, dict) and type(value) is not JSONSchema else value


def _check_types(schema: JSONSchema, where: str) -> None:
    """The schema's own ``type`` must be JSON schema's (nested schemas are left to the provider)."""
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        bad = [k for k in kinds if not isinstance(k, str) or k not in _SCHEMA_TYPES]
        if bad:
            raise ValueError(
                f"{where}.type {bad[0]!r} is not a JSON schema type; use one of {', '.join(sorted(_SCHEMA_TYPES))}"
            )


class _Open(BaseModel):
    """A frozen model that keeps keys it does not declare (provider extensions round-trip)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    def to_json_dict(self) -> dict[str, Any]:
        """Declared fields that are set (not None), then every unknown key exactly as given."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, _Open):
                out[name] = value.to_json_dict()
            elif value is not None:
                out[name] = value
        out.update(self.__pydantic_extra__ or {})
        return out


class FunctionCall(_Open):
    """The function a tool call invokes: its ``name`` and its ``arguments`` as a JSON string."""

    name: str
    arguments: str = "{}"

    @field_validator("arguments", mode="before")
    @classmethod
    def _serialise_arguments(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value
        if isinstance(value, (dict, list)):
            return json.dumps(value, ensure_ascii=False)
        raise ValueError(f"arguments must be a str, dict, or list; got {type(value).__name__}")

    def parsed_arguments(self) -> Any:
        """``arguments`` decoded from JSON, any JSON value (raises ``ValueError`` on invalid JSON)."""
        return json.loads(self.arguments)

    def get_arguments_dict(self) -> dict[str, Any]:
        """Oumi's accessor: ``arguments`` as a dict; ``""`` gives ``{}``; invalid JSON, or JSON that is not an
        object, raises ``ValueError`` naming the function."""
        if not self.arguments:
            return {}
        try:
            parsed = json.loads(self.arguments)
        except json.JSONDecodeError as exc:
            raise ValueError(f"Function '{self.name}' has invalid JSON arguments: {exc}") from None
        if not isinstance(parsed, dict):
            raise ValueError(f"Function '{self.name}' arguments must be a JSON object, got {type(parsed).__name__}.")
        return parsed


class ToolCall(_Open):
    """One call an assistant turn makes (OpenAI's ``tool_calls`` item); ``id`` is required, as in Oumi (a
    ``tool`` message names the call it answers by it)."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDefinition(_Open):
    """A function the model may call: ``name``, ``description`` and a JSON-schema ``parameters``."""

    name: str = Field(min_length=1)
    description: str | None = None
    parameters: JSONSchema | None = None


class Tool(_Open):
    """An OpenAI-style function tool offered to the model (``Conversation.tools`` item)."""

    type: Literal["function"] = "function"
    function: FunctionDefinition

    @property
    def name(self) -> str:
        return self.function.name

    @classmethod
    def from_function(cls, func: Any) -> Tool:
        """The tool for a Python function, from its type hints and Google-style docstring (the schema
        transformers' chat templates make: see :func:`infermux.tool_schema.get_json_schema`)."""
        from infermux.tool_schema import get_json_schema

        return cls.model_validate(get_json_schema(func))
