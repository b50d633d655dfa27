"""Bounds on guided decoding that a local engine compiles: a schema, regex or choice list is refused
before it is compiled when compiling it could take unbounded memory or time.

Local engines turn a constraint into a grammar: LLAMACPP writes GBNF (llama-cpp-python's converter
spells ``"minItems": N`` out as N copies of the item rule, and llama.cpp expands ``x{N}``), NATIVE and
VLLM compile with xgrammar. A constraint's cost is estimated from its shape, repetition counts
multiplied through their nesting (``minItems``/``maxItems``/``minLength``/... and a regex's ``{m,n}``),
and refused over :data:`MAX_EXPANSION`; so are schemas larger or deeper than :data:`MAX_SCHEMA_CHARS`
and :data:`MAX_DEPTH`, and ``$ref`` outside the schema (a converter would fetch it over the network).
The error is an :class:`~infermux.errors.InputError` naming the bound (a 400 from ``serve``).
"""

from __future__ import annotations

import json
from typing import Any

from infermux.configs.generation_params import GuidedDecodingParams
from infermux.errors import InputError

try:  # Python >= 3.11
    from re import _constants as _c  # type: ignore[attr-defined]
    from re import _parser as _sre  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as _c  # type: ignore[no-redef]
    import sre_parse as _sre  # type: ignore[no-redef]

__all__ = ["MAX_CHOICES", "MAX_DEPTH", "MAX_EXPANSION", "MAX_REGEX_CHARS", "MAX_SCHEMA_CHARS", "check_guided"]

MAX_SCHEMA_CHARS = 65_536
"""Longest JSON schema (as compact JSON), and longest choice list (all strings together)."""
MAX_DEPTH = 32
"""Deepest nesting of objects and arrays in a schema."""
MAX_EXPANSION = 100_000
"""Largest estimated grammar: the constraint's elements with repetition counts multiplied through."""
MAX_REGEX_CHARS = 4_096
"""Longest regular expression (``guided_decoding.regex`` or a schema's ``pattern``)."""
MAX_CHOICES = 1_000
"""Most strings in ``guided_decoding.choice``."""

# Keywords whose number is how many times a part of the grammar is spelled out.
_REPEATS = ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties",
            "minContains", "maxContains")  # fmt: skip
_HINT = "Simplify the constraint, or validate the answer after generation instead."


class _TooBig(Exception):
    pass


def check_guided(guided: GuidedDecodingParams | None, engine: str) -> None:
    """Raise :class:`InputError` when ``guided`` passes a bound; ``engine`` names who would compile it."""
    if guided is None:
        return
    try:
        if guided.kind == "json":
            _check_schema(guided.schema_dict() or {})
        elif guided.kind == "regex":
            _regex_units(guided.regex or "", "guided_decoding.regex")
        else:
            _check_choices(guided.choice or [])
    except _TooBig as exc:
        raise InputError(f"guided decoding on {engine}: {exc}. {_HINT}") from None


def _check_choices(choices: list[str]) -> None:
    if len(choices) > MAX_CHOICES:
        raise _TooBig(f"guided_decoding.choice lists {len(choices)} strings, more than the limit of {MAX_CHOICES}")
    if sum(len(c) for c in choices) > MAX_SCHEMA_CHARS:
        raise _TooBig(f"guided_decoding.choice is longer than the limit of {MAX_SCHEMA_CHARS} characters")


def _check_schema(schema: dict[str, Any]) -> None:
    _check_depth(schema)
    try:
        size = len(json.dumps(schema, separators=(",", ":")))
    except (TypeError, ValueError) as exc:
        raise _TooBig(f"the JSON schema cannot be written as JSON ({exc})") from None
    if size > MAX_SCHEMA_CHARS:
        raise _TooBig(f"the JSON schema is {size} characters, more than the limit of {MAX_SCHEMA_CHARS}")
    units = _schema_units(schema)
    if units > MAX_EXPANSION:
        raise _TooBig(
            f"the JSON schema spells out more than the limit of {MAX_EXPANSION} grammar elements (repetition "
            "counts such as minItems, maxItems, minLength and maxLength multiply through the nesting)"
        )


def _check_depth(schema: Any) -> None:
    stack = [(schema, 1)]  # iterative: a deep schema must not exhaust the Python stack here
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > MAX_DEPTH:
                    raise _TooBig(f"the JSON schema is nested more than {MAX_DEPTH} levels deep")
                stack.append((child, depth + 1))


def _schema_units(node: Any) -> int:
    if isinstance(node, list):
        return 1 + sum(_schema_units(item) for item in node)
    if not isinstance(node, dict):
        return 1
    units = 1
    for key, value in node.items():
        if key == "$ref" and isinstance(value, str) and not value.startswith("#"):
            raise _TooBig(f"$ref {value[:80]!r} points outside the schema; only local references (#/...) are allowed")
        if key == "pattern" and isinstance(value, str):
            units += _regex_units(value, "a schema's pattern")
        else:
            units += _schema_units(value)
        if units > MAX_EXPANSION:
            return units
    factor = max((_count(node.get(k)) for k in _REPEATS), default=1)
    return units * max(1, factor)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 1
    return int(min(max(value, 1), 10.0 * MAX_EXPANSION))


def _regex_units(pattern: str, where: str) -> int:
    if len(pattern) > MAX_REGEX_CHARS:
        raise _TooBig(f"{where} is {len(pattern)} characters, more than the limit of {MAX_REGEX_CHARS}")
    try:
        parsed = _sre.parse(pattern)
    except Exception:
        return len(pattern)  # not a regex Python reads: the engine's own compiler says what is wrong
    units = _sequence_units(parsed)
    if units > MAX_EXPANSION:
        raise _TooBig(
            f"{where} spells out more than the limit of {MAX_EXPANSION} grammar elements (repetition counts "
            "such as {m,n} multiply through the nesting)"
        )
    return units


def _sequence_units(items: Any) -> int:
    total = 0
    for op, av in items:
        total += _item_units(op, av)
        if total > MAX_EXPANSION:
            break
    return total


def _item_units(op: Any, av: Any) -> int:
    if op == _c.BRANCH:
        return sum(_sequence_units(alt) for alt in av[1])
    if op == _c.SUBPATTERN:
        return _sequence_units(av[-1])
    if op in (_c.MAX_REPEAT, _c.MIN_REPEAT, getattr(_c, "POSSESSIVE_REPEAT", None)):
        low, high, sub = av
        times = low + 1 if high == _c.MAXREPEAT else high
        return max(1, min(times, 10 * MAX_EXPANSION)) * max(1, _sequence_units(sub))
    if op in (getattr(_c, "ATOMIC_GROUP", None), _c.ASSERT, _c.ASSERT_NOT):
        sub = av[-1] if isinstance(av, tuple) else av
        return _sequence_units(sub)
    return 1
