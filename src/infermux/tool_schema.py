"""A Python function as an OpenAI-style tool: the JSON schema transformers' chat templates make.

``Conversation(tools=[get_weather])`` and :meth:`infermux.types.Tool.from_function` use it, as Oumi's
``Conversation`` does with ``transformers.utils.get_json_schema``; this module gives the same output
without importing transformers. The function needs type hints on its arguments and a Google-style
docstring describing each of them::

    def get_weather(city: str, unit: Literal["C", "F"] = "C") -> str:
        \"\"\"Get the current weather for a city.

        Args:
            city: The city to look up.
            unit: The temperature unit.

        Returns:
            A short description.
        \"\"\"

An argument's description may end in ``(choices: ["tea", "coffee"])``, which becomes its ``enum``.
"""

from __future__ import annotations

import inspect
import json
import re
import types
from collections.abc import Callable
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

__all__ = ["ToolSchemaError", "get_json_schema"]


class ToolSchemaError(ValueError):
    """A function cannot be described as a tool (no docstring, an argument without a type hint or a
    description, a type hint JSON schema cannot express)."""


_SECTION = r"(?:Args|Returns|Raises):"
_SUMMARY = re.compile(rf"^(.*?)[\n\s]*(?:{_SECTION}|\Z)", re.DOTALL)
_ARGS = re.compile(r"\n\s*Args:\n\s*(.*?)[\n\s]*(?:Returns:|Raises:|\Z)", re.DOTALL)
_RETURNS = re.compile(r"\n\s*Returns:\n\s*(.*?)[\n\s]*(?:Raises:|\Z)", re.DOTALL)
_ARG = re.compile(r"(?:^|\n)\s*(\w+):\s*(.*?)\s*(?=\n\s*\w+:|\Z)", re.DOTALL)
_CHOICES = re.compile(r"\(choices:\s*(.*?)\)\s*$", re.IGNORECASE)

_BASIC: dict[Any, dict[str, Any]] = {
    int: {"type": "integer"},
    float: {"type": "number"},
    str: {"type": "string"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
    list: {"type": "array"},
    tuple: {"type": "array"},
    dict: {"type": "object"},
    Any: {},
}


def get_json_schema(func: Callable[..., Any]) -> dict[str, Any]:
    """``{"type": "function", "function": {"name", "description", "parameters"[, "return"]}}`` for ``func``,
    as ``transformers.utils.get_json_schema`` makes it; raises :class:`ToolSchemaError` when it cannot."""
    name = getattr(func, "__name__", "operation")
    doc = inspect.getdoc(func)
    if not doc:
        raise ToolSchemaError(
            f"Cannot make a tool of {name}: it has no docstring. Add a Google-style docstring with a "
            "summary and an 'Args:' section describing each argument."
        )
    summary, described, returns = _parse_docstring(doc.strip())
    parameters = _parameters(func, name)
    returned = parameters["properties"].pop("return", None)
    if returned is not None and returns is not None:
        returned["description"] = returns
    for arg, schema in parameters["properties"].items():
        if arg not in described:
            raise ToolSchemaError(
                f"Cannot make a tool of {name}: the docstring has no description for the argument '{arg}' "
                f"(add '{arg}: ...' under 'Args:')."
            )
        text = described[arg]
        choices = _CHOICES.search(text)
        if choices:
            schema["enum"] = [c.strip() if isinstance(c, str) else c for c in json.loads(choices.group(1))]
            text = text[: choices.start()].strip()
        schema["description"] = text
    function: dict[str, Any] = {"name": name, "description": summary, "parameters": parameters}
    if returned is not None:
        function["return"] = returned
    return {"type": "function", "function": function}


def _parse_docstring(doc: str) -> tuple[str | None, dict[str, str], str | None]:
    """The summary, each argument's description (continuation lines joined by spaces) and the Returns text."""
    summary = _SUMMARY.search(doc)
    args = _ARGS.search(doc)
    returns = _RETURNS.search(doc)
    described: dict[str, str] = {}
    if args is not None:
        block = "\n".join(line for line in args.group(1).strip().split("\n") if line.strip())
        described = {m[0]: re.sub(r"\s*\n+\s*", " ", m[1].strip()) for m in _ARG.findall(block)}
    return (
        summary.group(1).strip() if summary else None,
        described,
        returns.group(1).strip() if returns else None,
    )


def _parameters(func: Callable[..., Any], name: str) -> dict[str, Any]:
    hints = get_type_hints(func)
    params = inspect.signature(func).parameters
    first = next(iter(params), None)
    receiver = first if first in ("self", "cls") and params[first].annotation is inspect.Parameter.empty else None
    required = []
    for arg, param in params.items():
        if arg == receiver:
            continue
        if param.annotation is inspect.Parameter.empty:
            raise ToolSchemaError(f"Cannot make a tool of {name}: the argument {arg} has no type hint.")
        if param.default is inspect.Parameter.empty:
            required.append(arg)
    properties = {arg: _hint_schema(hint) for arg, hint in hints.items() if arg != receiver}
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def _hint_schema(hint: Any) -> dict[str, Any]:
    origin, args = get_origin(hint), get_args(hint)
    if origin is None:
        return _plain_type(hint)
    if origin is Union or origin is types.UnionType:
        parts = [_hint_schema(a) for a in args if a is not type(None)]
        out: dict[str, Any]
        if len(parts) == 1:
            out = parts[0]
        elif all(p.keys() == {"type"} and isinstance(p["type"], str) for p in parts):
            names = sorted({p["type"] for p in parts})
            out = {"type": names[0] if len(names) == 1 else names}
        else:
            out = {"anyOf": parts}
        if type(None) in args:
            out["nullable"] = True
        return out
    if origin is Literal and args:
        kinds: list[str] = []
        for value in args:
            if type(value) not in (int, float, str, bool, type(None)):
                raise ToolSchemaError("Only plain values (str, int, float, bool, None) can be listed in a Literal.")
            kind = _BASIC[type(value)]["type"]
            if kind not in kinds:
                kinds.append(kind)
        return {"type": kinds[0] if len(kinds) == 1 else kinds, "enum": list(args)}
    if origin is list:
        return {"type": "array", "items": _hint_schema(args[0])} if args else {"type": "array"}
    if origin is tuple:
        if not args:
            return {"type": "array"}
        if len(args) == 1 or ... in args:
            raise ToolSchemaError(f"Cannot describe {hint}: use list[...] for a sequence of any length.")
        return {"type": "array", "prefixItems": [_hint_schema(a) for a in args]}
    if origin is dict:
        if len(args) == 2:
            return {"type": "object", "additionalProperties": _hint_schema(args[1])}
        return {"type": "object"}
    raise ToolSchemaError(f"Cannot describe the type hint {hint} as JSON schema.")


def _plain_type(hint: Any) -> dict[str, Any]:
    known = _BASIC.get(hint)
    if known is not None:
        return dict(known)
    # What transformers maps when PIL or torch is installed, recognised without importing either.
    where = (getattr(hint, "__module__", ""), getattr(hint, "__qualname__", ""))
    if where == ("PIL.Image", "Image"):
        return {"type": "image"}
    if where == ("torch", "Tensor"):
        return {"type": "audio"}
    return {"type": "object"}  # any other class
