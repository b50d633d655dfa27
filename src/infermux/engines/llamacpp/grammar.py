"""Guided decoding for llama.cpp: a GBNF grammar for each constraint kind.

- ``json``: llama-cpp-python's own JSON-schema converter.
- ``choice``: an alternation of string literals.
- ``regex``: translated from Python's parse of the pattern. The grammar accepts a subset of what the
  regex matches (never more): ``\\d``, ``\\w``, ``\\s`` become their ASCII forms and their negations
  printable-ASCII subsets, so every output matches the regex (``re.fullmatch``). Constructs a grammar
  cannot express (back-references, look-arounds, inner anchors, flags) are refused with a clear error
  rather than approximated.
"""

from __future__ import annotations

import json
from typing import Any

from infermux.configs.generation_params import GuidedDecodingParams
from infermux.engines.guided_bounds import check_guided
from infermux.errors import UnsupportedParamError

try:  # Python >= 3.11
    from re import _constants as _c  # type: ignore[attr-defined]
    from re import _parser as _sre  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as _c  # type: ignore[no-redef]
    import sre_parse as _sre  # type: ignore[no-redef]

__all__ = ["choice_to_gbnf", "grammar_for", "regex_to_gbnf"]

_DIGIT = [(0x30, 0x39)]
_WORD = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]
_SPACE = [(0x09, 0x0D), (0x20, 0x20)]
_PRINTABLE = [(0x09, 0x0A), (0x20, 0x7E)]  # tab, newline and printable ASCII


def grammar_for(guided: GuidedDecodingParams) -> str:
    """The GBNF grammar (root rule ``root``) enforcing ``guided``, within :mod:`..guided_bounds`."""
    check_guided(guided, "LLAMACPP")
    if guided.kind == "choice":
        return choice_to_gbnf(guided.choice or [])
    if guided.kind == "regex":
        return regex_to_gbnf(guided.regex or "")
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    schema = guided.schema_dict()
    try:
        return str(json_schema_to_gbnf(json.dumps(schema)))
    except Exception as exc:
        raise UnsupportedParamError(
            f"LLAMACPP cannot turn this JSON schema into a grammar: {exc}. Simplify the schema."
        ) from exc


def _literal(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def choice_to_gbnf(choices: list[str]) -> str:
    """``root ::= "a" | "b" | ...``: the output is exactly one of ``choices``."""
    return "root ::= " + " | ".join(_literal(c) for c in choices) + "\n"


def _class_char(code: int) -> str:
    if chr(code) in "\\]-^[" or code < 0x20 or code == 0x7F:  # hex escapes are always understood
        return f"\\x{code:02X}"
    if code > 0xFFFF:
        return f"\\U{code:08X}"
    return chr(code)


def _char_class(ranges: list[tuple[int, int]], negate: bool = False) -> str:
    parts = [_class_char(lo) if lo == hi else f"{_class_char(lo)}-{_class_char(hi)}" for lo, hi in ranges]
    return "[" + ("^" if negate else "") + "".join(parts) + "]"


def _complement_printable(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Printable ASCII (plus tab, newline) minus ``ranges``: a safe subset of a negated category."""
    excluded = {c for lo, hi in ranges for c in range(lo, hi + 1)}
    keep = [c for lo, hi in _PRINTABLE for c in range(lo, hi + 1) if c not in excluded]
    out: list[tuple[int, int]] = []
    for code in keep:
        if out and out[-1][1] == code - 1:
            out[-1] = (out[-1][0], code)
        else:
            out.append((code, code))
    return out


_CATEGORIES: dict[Any, tuple[list[tuple[int, int]], bool]] = {
    _c.CATEGORY_DIGIT: (_DIGIT, False),
    _c.CATEGORY_WORD: (_WORD, False),
    _c.CATEGORY_SPACE: (_SPACE, False),
    _c.CATEGORY_NOT_DIGIT: (_DIGIT, True),
    _c.CATEGORY_NOT_WORD: (_WORD, True),
    _c.CATEGORY_NOT_SPACE: (_SPACE, True),
}


class _Unsupported(Exception):
    pass


class _RegexToGbnf:
    def sequence(self, items: Any, top: bool = False) -> str:
        items = list(items)
        if top:  # anchors at the very start/end say nothing beyond full-match semantics
            while items and items[0][0] == _c.AT and items[0][1] in (_c.AT_BEGINNING, _c.AT_BEGINNING_STRING):
                items.pop(0)
            while items and items[-1][0] == _c.AT and items[-1][1] in (_c.AT_END, _c.AT_END_STRING):
                items.pop()
        if len(items) == 1 and items[0][0] == _c.BRANCH and top:
            return " | ".join(self.sequence(alt, top=True) for alt in items[0][1][1])
        parts = [self.item(op, av) for op, av in items]
        return " ".join(parts) if parts else '""'

    def item(self, op: Any, av: Any) -> str:
        if op == _c.LITERAL:
            return _literal(chr(av))
        if op == _c.NOT_LITERAL:
            return _char_class([(av, av)], negate=True)
        if op == _c.ANY:
            return "[^\\n]"
        if op == _c.IN:
            return self.char_set(av)
        if op == _c.BRANCH:
            return "(" + " | ".join(self.sequence(alt) for alt in av[1]) + ")"
        if op == _c.SUBPATTERN:
            _group, add_flags, del_flags, sub = av
            if add_flags or del_flags:
                raise _Unsupported("inline flags such as (?i)")
            return "(" + self.sequence(sub) + ")"
        if op in (_c.MAX_REPEAT, _c.MIN_REPEAT):
            low, high, sub = av
            inner = "(" + self.sequence(sub) + ")"
            if high == _c.MAXREPEAT:
                return {0: inner + "*", 1: inner + "+"}.get(low, f"{inner}{{{low},}}")
            if (low, high) == (0, 1):
                return inner + "?"
            return f"{inner}{{{low}}}" if low == high else f"{inner}{{{low},{high}}}"
        names = {_c.AT: "anchors inside the pattern", _c.GROUPREF: "back-references"}
        raise _Unsupported(names.get(op, f"the construct {str(op).lower()}"))

    def char_set(self, items: Any) -> str:
        negate = bool(items) and items[0][0] == _c.NEGATE
        ranges: list[tuple[int, int]] = []
        for op, av in items[1:] if negate else items:
            if op == _c.LITERAL:
                ranges.append((av, av))
            elif op == _c.RANGE:
                ranges.append((av[0], av[1]))
            elif op == _c.CATEGORY and av in _CATEGORIES:
                cat, cat_negated = _CATEGORIES[av]
                if negate:
                    raise _Unsupported("character categories inside a negated set such as [^\\d]")
                ranges.extend(_complement_printable(cat) if cat_negated else cat)
            else:
                raise _Unsupported(f"the set item {str(op).lower()}")
        return _char_class(ranges, negate)


def regex_to_gbnf(pattern: str) -> str:
    """A GBNF grammar whose every sentence fully matches ``pattern``."""
    try:
        parsed = _sre.parse(pattern)
    except Exception as exc:
        raise UnsupportedParamError(
            f"guided_decoding.regex {pattern!r} is not a valid regular expression: {exc}"
        ) from None
    if parsed.state.flags & ~(_c.SRE_FLAG_UNICODE):
        raise UnsupportedParamError(
            f"guided_decoding.regex {pattern!r}: LLAMACPP grammars do not support regex flags; remove them."
        )
    try:
        body = _RegexToGbnf().sequence(parsed, top=True)
    except _Unsupported as exc:
        raise UnsupportedParamError(
            f"guided_decoding.regex {pattern!r} uses {exc}, which LLAMACPP grammars cannot express. "
            "Rewrite the pattern without it, or use guided_decoding.json / choice."
        ) from None
    return f"root ::= {body}\n"
