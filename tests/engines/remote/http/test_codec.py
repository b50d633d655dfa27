"""The JSON codec of request bodies and replies: what ``json.loads``/``json.dumps`` give, faster."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from infermux.engines.remote.http.codec import decode_json, encode_json


@pytest.mark.parametrize(
    "body",
    [
        '{"a": "caf\u00e9 \U0001f600", "b": [1, 2.5, null]}'.encode(),
        b'{"half": "\\ud83d"}',  # a lone surrogate escape decodes as json.loads does
        '{"half": "\ud83d"}'.encode("utf-8", "surrogatepass"),  # a raw one too
        '{"x": 1}'.encode("utf-16-le"),  # "{" then NUL: encoding detection still applies
        '{"x": 1}'.encode("utf-16"),
        '{"x": 1}'.encode("utf-8-sig"),
        b' {"x": 1}',
        b"[1, 2]",
        b'{"big": 123456789012345678901234567890, "neg": -98765432109876543210987}',  # exact, not floats
        b'{"f": [0.30000000000000004, 1.7976931348623157e308, 5e-324, -0.0, 1E+2]}',
        b'{"a": 1, "a": 2}',  # the last of a repeated key, as json.loads keeps it
        b'{"n": NaN, "i": -Infinity}',  # json.loads' extension: still read
        b'{"esc": "\\u00e9\\n\\t\\"\\\\\\/"}',
    ],
)
def test_reply_bodies_decode_as_json_loads_does(body: bytes) -> None:
    got, expected = decode_json(body), json.loads(body)
    assert repr(got) == repr(expected)  # repr: NaN compares unequal to itself, and int 1 == float 1.0


@pytest.mark.parametrize("body", [b"{", b'{"x": 1} extra', b'{"x": "\xff"}', b"", b"nul", b"[1,]"])
def test_bad_reply_bodies_fail_as_json_loads_does(body: bytes) -> None:
    with pytest.raises(ValueError) as expected:
        json.loads(body)
    with pytest.raises(type(expected.value)):
        decode_json(body)


@pytest.mark.parametrize(
    "payload",
    [
        {"model": "m", "messages": [{"role": "user", "content": 'caf\u00e9 \U0001f600 \u2028 \x01 "q" \\'}]},
        {"temperature": 0.7, "top_p": 1e-05, "big": 10**30, "seed": -(2**63), "stop": None, "stream": False},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]},
        [1, 2.5, "x", None, True, {"1": []}],
        {1: "an int key, written as a string as json.dumps does"},
    ],
)
def test_bodies_read_back_as_json_dumps_would(payload: Any) -> None:
    body = encode_json(payload)
    assert isinstance(body, bytes)
    assert json.loads(body) == json.loads(json.dumps(payload))
    assert b"\\u00e9" not in body and b": " not in body  # compact UTF-8, as before


def test_a_lone_surrogate_in_a_body_fails_as_before() -> None:
    with pytest.raises(UnicodeEncodeError):
        encode_json({"content": "half \ud83d"})


def test_what_json_cannot_encode_fails_as_before() -> None:
    with pytest.raises(TypeError):
        encode_json({"value": object()})


def test_a_non_finite_float_is_sent_as_null() -> None:
    """``json.dumps`` wrote the non-JSON ``NaN``, which servers refuse; null is the JSON for no number."""
    assert json.loads(encode_json({"x": math.nan, "y": math.inf})) == {"x": None, "y": None}
