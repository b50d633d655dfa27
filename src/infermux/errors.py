"""The exceptions infermux raises, in one tree.

::

    InfermuxError                    base of everything below; ``str(e)`` is a user-facing paragraph
    ├── ConfigError                  a config file or override is wrong (names file, line and key)
    ├── InputError                   an input file or row is wrong (names file and line)
    ├── OutputError                  the output cannot be written (unwritable dir, ...)
    ├── EngineUnavailableError       the engine's optional dependency is not installed (says which extra)
    ├── UnsupportedParamError        strict mode: the engine does not support a requested parameter
    ├── ModelNotFoundError           a model path/name cannot be resolved locally
    └── RemoteError                  a remote call failed for good (status, retryable, provider message)
        └── AuthenticationError      401/403: says which environment variable or field to set

Per-row failures inside a batch are not exceptions: they are :class:`RowError` records, written to the
job's errors file, so one bad row never ends a job.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "AuthenticationError",
    "ConfigError",
    "EngineUnavailableError",
    "InfermuxError",
    "InputError",
    "ModelNotFoundError",
    "OutputError",
    "RemoteError",
    "RowError",
    "UnsupportedParamError",
]


class InfermuxError(Exception):
    """Base class; the message is meant for the user as is (no traceback needed)."""

    exit_code = 2


class ConfigError(InfermuxError):
    """A configuration file, field or override is invalid."""


class InputError(InfermuxError):
    """An input file or one of its rows is invalid."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)
        self.path = path
        self.line = line


class OutputError(InfermuxError):
    """The output location cannot be written."""


class EngineUnavailableError(InfermuxError):
    """The engine needs an optional dependency that is not installed."""


class UnsupportedParamError(InfermuxError):
    """Strict mode: a requested parameter is not supported by the engine."""


class ModelNotFoundError(InfermuxError):
    """A model cannot be found locally (and the hub is not reachable or not allowed)."""


class RemoteError(InfermuxError):
    """A remote request failed and will not be retried."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        kind: str = "http_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.kind = kind

    def to_row_error(self) -> RowError:
        return RowError(kind=self.kind, message=str(self), status=self.status, retryable=self.retryable)


class AuthenticationError(RemoteError):
    """The provider rejected the credentials (401/403)."""


@dataclass(frozen=True)
class RowError:
    """A failed row, recorded as data: what went wrong and whether retrying may help."""

    kind: str
    message: str
    status: int | None = None
    retryable: bool = False

    def to_json_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_exception(cls, exc: BaseException) -> RowError:
        if isinstance(exc, RemoteError):
            return exc.to_row_error()
        message = str(exc) or exc.__class__.__name__
        return cls(kind=exc.__class__.__name__, message=message, retryable=False)
