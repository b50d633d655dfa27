"""Row errors: one vocabulary of kinds (ErrorKind) and one boundary where exceptions become row errors."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from infermux.errors import (
    AuthenticationError,
    ConfigError,
    ErrorKind,
    InputError,
    RemoteError,
    RowError,
    install_hint,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "infermux"


def test_kinds_are_enum_members_that_write_as_before():
    error = RowError(kind="http_error", message="HTTP 400: bad", status=400)
    assert error.kind is ErrorKind.HTTP_ERROR
    assert json.dumps(error.to_json_dict()) == (
        '{"kind": "http_error", "message": "HTTP 400: bad", "status": 400, "retryable": false}'
    )
    # A plugin engine's own kind is kept as written.
    assert RowError(kind="test_failure", message="x").to_json_dict()["kind"] == "test_failure"


def test_from_exception_is_the_one_boundary():
    remote = RowError.from_exception(RemoteError("HTTP 429", status=429, retryable=True, kind="rate_limited"))
    assert (remote.kind, remote.status, remote.retryable) == (ErrorKind.RATE_LIMITED, 429, True)
    auth = RowError.from_exception(AuthenticationError("no key", kind=ErrorKind.AUTHENTICATION))
    assert auth.kind is ErrorKind.AUTHENTICATION
    assert RowError.from_exception(InputError("bad row", path="in.jsonl", line=3)).kind is ErrorKind.INVALID_INPUT
    crash = RowError.from_exception(KeyError("x"))
    assert crash.kind is ErrorKind.GENERATION_FAILED and crash.message == "KeyError: 'x'" and not crash.retryable
    template = RowError.from_exception(ValueError("no system role"), ErrorKind.INVALID_INPUT, context="chat template")
    assert template.kind is ErrorKind.INVALID_INPUT and template.message == "chat template: no system role"
    assert RowError.from_exception(ConfigError("too long"), ErrorKind.INVALID_INPUT).message == "too long"


def _kind_literals() -> list[tuple[str, int, str]]:
    found = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            value = node.value if isinstance(node, ast.keyword) and node.arg == "kind" else None
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                found.append((str(path.relative_to(SRC)), value.lineno, value.value))
    return found


def test_every_kind_written_in_the_source_is_documented():
    """The same failure has the same kind on every engine: no engine invents a spelling of its own."""
    literals = _kind_literals()
    assert literals, "the scan found no kind= literals at all"
    unknown = [f"{path}:{line}: {kind!r}" for path, line, kind in literals if kind not in set(ErrorKind)]
    assert not unknown, "kinds outside ErrorKind: " + ", ".join(unknown)
    doc = (SRC / "errors.py").read_text(encoding="utf-8").split('"""', 2)[1]
    assert all(kind.value in doc for kind in ErrorKind), "errors.py's docstring lists every ErrorKind"


@pytest.mark.parametrize(("extra", "package", "command"), [
    ("vllm", None, "pip install 'infermux[vllm]'"), (None, "peft", "pip install peft"), (None, None, "pip install infermux"),
])  # fmt: skip
def test_install_hint_has_one_spelling(extra, package, command):
    assert install_hint(extra, package) == command


def test_no_other_module_spells_the_install_command():
    offenders = [
        str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
        if p.name != "errors.py" and "pip install 'infermux[" in p.read_text(encoding="utf-8")
    ]  # fmt: skip
    assert not offenders


def test_every_error_kind_is_documented_in_batch_md() -> None:
    table = (Path(__file__).resolve().parents[1] / "docs" / "batch.md").read_text(encoding="utf-8")
    missing = [kind.value for kind in ErrorKind if f"`{kind.value}`" not in table]
    assert not missing, f"docs/batch.md's table of kinds lacks {missing}"
