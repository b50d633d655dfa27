"""What every command shares: logging set-up, user-error handling, config loading from CLI options."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, NoReturn

from infermux.errors import InfermuxError

if TYPE_CHECKING:
    from infermux.configs.inference_config import InferenceConfig

EXIT_USER_ERROR = 2
EXIT_ROWS_FAILED = 3
EXIT_BUDGET = 4  # --max-cost stopped the job before every row started (resumable)

_debug = False


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname.lower()
        return f"{level}: {record.getMessage()}" if record.levelno >= logging.WARNING else record.getMessage()


def setup_logging(level: str) -> None:
    global _debug
    name = level.strip().upper()
    numeric = getattr(logging, name, None)
    if not isinstance(numeric, int):
        fail(f"unknown --log-level {level!r}: use debug, info, warning or error.")
    _debug = numeric <= logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter() if not _debug else logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if not _debug else logging.DEBUG)
    logging.getLogger("infermux").setLevel(numeric)


def fail(message: str, code: int = EXIT_USER_ERROR) -> NoReturn:
    sys.stderr.write(f"error: {message}\n")
    raise SystemExit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn infermux errors into a one-paragraph message and exit code 2 (traceback only in debug)."""
    try:
        yield
    except InfermuxError as exc:
        if _debug:
            raise
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted; rerun the same command to resume.\n")
        raise SystemExit(130) from None


def load_cli_config(
    config: str | None, overrides: list[str], *, engine: str | None = None, strict: bool = False
) -> InferenceConfig:
    from infermux.configs.loader import load_config, parse_overrides

    pairs = parse_overrides(overrides)
    if engine:
        pairs.append(("engine", engine))
    if strict:
        pairs.append(("strict", "true"))
    return load_config(config, pairs)
