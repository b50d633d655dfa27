"""Python functions as tools (issue 24 item 3): infermux.tool_schema gives what transformers'
``get_json_schema`` gives (the function Oumi's ``Conversation`` calls, conversation.py:483), checked
against transformers itself, without importing it at import time."""

from __future__ import annotations

import subprocess
import sys
from typing import Any, Literal, Optional, Union

import pytest

from infermux.tool_schema import ToolSchemaError, get_json_schema


def plain(x: float, y: float):  # type: ignore[no-untyped-def]
    """Multiply two numbers.

    Args:
        x: The first number
        y: The second number,
            described on two lines.
    """
    return x * y


def rich(
    name: str,
    tags: list[str],
    pair: tuple[int, str],
    scores: dict[str, float],
    mode: Literal["a", "b", 3],
    maybe: Optional[int] = None,  # noqa: UP045
    either: Union[int, str] = 1,  # noqa: UP007
    nested: list[int] | dict[str, int] | None = None,
    anything: Any = None,
    flag: bool = False,
    obj: object = None,
) -> dict[str, int]:
    """Do many things
    across two lines.

    Args:
        name: A name.
        tags: Tags (choices: ["x", "y"])
        pair: A pair.
        scores: Scores.
        mode: The mode.
        maybe: Maybe a number.
        either: Int or string.
        nested: Nested.
        anything: Anything.
        flag: A flag.
        obj: Some object.

    Returns:
        Counts.

    Raises:
        ValueError: never.
    """
    return {}


class Holder:
    def method(self, city: str) -> str:
        """Look up a city.

        Args:
            city: The city.
        """
        return city


@pytest.mark.parametrize("func", [plain, rich, Holder().method, Holder.method], ids=["plain", "rich", "bound", "self"])
def test_same_schema_as_transformers(func):  # type: ignore[no-untyped-def]
    transformers_utils = pytest.importorskip("transformers.utils")
    assert get_json_schema(func) == transformers_utils.get_json_schema(func)


def test_what_cannot_be_described_is_refused_with_the_reason():
    def undocumented(x: int) -> int:
        return x

    def unhinted(x):  # type: ignore[no-untyped-def]
        """Does.

        Args:
            x: A thing.
        """

    def undescribed(x: int, y: int) -> int:
        """Does.

        Args:
            x: A thing.
        """
        return x

    for func, says in [(undocumented, "no docstring"), (unhinted, "no type hint"), (undescribed, "argument 'y'")]:
        with pytest.raises(ToolSchemaError, match=says):
            get_json_schema(func)


def test_importing_types_does_not_import_transformers():
    code = "import infermux.types, infermux.tool_schema, sys; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
