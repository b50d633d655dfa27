"""JSON for request bodies and replies: msgspec's codec, with the standard library's answer wherever msgspec
refuses a document.

Every remote row encodes one request body and decodes one reply. For the small documents of a chat
completion the standard library spends ~3 µs encoding and ~4.5 µs decoding (most of it Python-level set-up
per call); msgspec (https://jcristharif.com/msgspec/) does each in well under 1.5 µs. Measured with
``benchmarks/bench_remote.py`` (P2, docs/benchmarks.md).

What is decoded is what ``json.loads`` gives for the same valid JSON (integers of any size stay exact).
Documents msgspec refuses go through ``json.loads`` unchanged, so its extensions and its errors stay as they
were: ``NaN``/``Infinity`` literals, lone surrogate escapes such as ``"\\ud83d"`` (valid JSON a server that
stops inside an emoji sends), UTF-16/32 bodies, and the ``ValueError`` of a malformed reply.

Bodies are compact UTF-8 as before; two spellings differ from ``json.dumps`` and mean the same to any JSON
reader: floats in their shortest form without ``+`` (``1e16``, ``0.00001``), and a NaN or infinite float
is ``null`` (``json.dumps`` writes the non-JSON ``NaN``). Values msgspec cannot encode fall back to
``json.dumps`` and fail as they did (``TypeError``, or ``UnicodeEncodeError`` for a lone surrogate).
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

__all__ = ["decode_json", "encode_json"]

_encode = msgspec.json.encode
_decode = msgspec.json.decode
# The standard library's forms, for what msgspec refuses: one encoder for every body (``json.dumps`` with
# options builds a new encoder per call), and what ``json.loads`` calls without its per-call checks.
_STD_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_STD_DECODE = json.JSONDecoder().decode


def encode_json(payload: Any) -> bytes:
    """``payload`` as compact UTF-8 JSON bytes (see the module docstring for the two spellings)."""
    try:
        return _encode(payload)
    except (TypeError, ValueError, OverflowError):  # a value only the standard library takes, or a real error
        return _STD_ENCODE(payload).encode()


def decode_json(body: bytes) -> Any:
    """``json.loads(body)``: the same value for the same document, and the same ``ValueError`` when it is
    not JSON."""
    try:
        return _decode(body)
    except msgspec.DecodeError:
        pass
    # json.loads detects the encoding of bytes first (a Python-level step): a body that opens with "{" and
    # no NUL byte after it is UTF-8 by that same rule, so it is decoded at once.
    if len(body) > 1 and body[0] == 0x7B and body[1]:
        return _STD_DECODE(body.decode("utf-8", "surrogatepass"))
    return json.loads(body)
