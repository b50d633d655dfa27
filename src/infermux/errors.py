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
        ├── AuthenticationError      401/403: says which environment variable or field to set
        └── ServerUnreachableError   no connection to the server, and none of the job's requests ever
                                     succeeded: the job stops instead of failing every row the same way

Per-row failures inside a batch are not exceptions: they are :class:`RowError` records, written to the
job's errors file, so one bad row never ends a job. :meth:`RowError.from_exception` is the one place where an
exception raised while running a row becomes such a record; its ``kind`` is an :class:`ErrorKind`::

    invalid_input        the row cannot become a request (bad conversation, the chat template rejects it)
    unsupported_input    the engine cannot take this row (images, tool messages, ...)
    authentication       credentials missing or rejected (401/403)
    rate_limited         429 after the retries
    timeout              no reply within connection_timeout
    connection_error     the connection failed or the answer stream broke off
    http_error           any other non-2xx reply, worth retrying later (``status`` says which)
    invalid_request      the provider refused the request (400, 404, 422, ...): retrying cannot help
    quota_exceeded       billing, credits, quota or spend limit of the account (OpenAI's 429 insufficient_quota)
    context_length_exceeded   the conversation is longer than the model accepts
    malformed_response   the reply could not be parsed
    generation_failed    a local engine failed while generating
    output_error         the answer could not be written to the job's output
    batch_failed / batch_expired / batch_cancelled / batch_error   a provider Batch API shard or row failed
    replica_lost         a Ray cluster replica died each time the row was sent (``--ray`` jobs)
    internal             an infermux bug (a row was never run)

A plugin engine may record a kind of its own (any snake_case string); it is written as given.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AuthenticationError",
    "ConfigError",
    "EngineUnavailableError",
    "ErrorKind",
    "InfermuxError",
    "InputError",
    "ModelNotFoundError",
    "OutputError",
    "RemoteError",
    "RowError",
    "ServerUnreachableError",
    "UnsupportedParamError",
    "install_hint",
]


class ErrorKind(str, enum.Enum):
    """Why a row failed; the same failure has the same kind on every engine (values are the JSON strings)."""

    INVALID_INPUT = "invalid_input"
    UNSUPPORTED_INPUT = "unsupported_input"
    AUTHENTICATION = "authentication"
    RATE_LIMITED = "rate_limited"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    HTTP_ERROR = "http_error"
    INVALID_REQUEST = "invalid_request"  # the provider refused the request (4xx): retrying cannot help
    QUOTA_EXCEEDED = "quota_exceeded"  # billing, credits, quota or spend limit of the account
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    MALFORMED_RESPONSE = "malformed_response"
    GENERATION_FAILED = "generation_failed"
    OUTPUT_ERROR = "output_error"
    BATCH_FAILED = "batch_failed"
    BATCH_EXPIRED = "batch_expired"
    BATCH_CANCELLED = "batch_cancelled"
    BATCH_ERROR = "batch_error"
    REPLICA_LOST = "replica_lost"
    INTERNAL = "internal"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def coerce(cls, value: ErrorKind | str) -> ErrorKind | str:
        """The member for ``value`` when it is one of ours; a plugin's own kind stays a plain string."""
        try:
            return cls(value)
        except ValueError:
            return str(value)


def install_hint(extra: str | None = None, package: str | None = None) -> str:
    """The one spelling of an install command: ``pip install 'infermux[extra]'`` or ``pip install package``."""
    if extra:
        return f"pip install 'infermux[{extra}]'"
    return f"pip install {package or 'infermux'}"


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
    """Strict mode (or a server's request): a requested parameter is not supported by the engine.

    ``params`` names the fields, in order (``"tools"`` for an input's tools)."""

    def __init__(self, message: str, *, params: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.params = params


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
        kind: ErrorKind | str = ErrorKind.HTTP_ERROR,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.kind = ErrorKind.coerce(kind)

    def to_row_error(self) -> RowError:
        return RowError(kind=self.kind, message=str(self), status=self.status, retryable=self.retryable)


class AuthenticationError(RemoteError):
    """The provider rejected the credentials (401/403)."""


class ServerUnreachableError(RemoteError):
    """The server cannot be reached and no request of this job ever got through (a wrong URL or port, a
    server not started): every row would fail the same way, so the job stops early, resumable."""


@dataclass(frozen=True)
class RowError:
    """A failed row, recorded as data: what went wrong and whether retrying may help."""

    kind: ErrorKind | str
    message: str
    status: int | None = None
    retryable: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", ErrorKind.coerce(self.kind))

    def to_json_dict(self) -> dict[str, Any]:
        return {"kind": str(self.kind), "message": self.message, "status": self.status, "retryable": self.retryable}

    @classmethod
    def from_exception(
        cls, exc: BaseException, kind: ErrorKind | str = ErrorKind.GENERATION_FAILED, *, context: str = ""
    ) -> RowError:
        """The one boundary where an exception raised for a row becomes a row error.

        A :class:`RemoteError` keeps its own kind, status and retryability; an :class:`InputError` is
        ``invalid_input``; anything else gets ``kind``. The message is the exception's own for our errors
        and ``ValueError`` (written to be read), and names the class for anything else (``KeyError: 'x'``).
        ``context`` (e.g. ``"chat template failed"``) is put in front of the message.
        """
        detail = str(exc)
        if isinstance(exc, RemoteError):
            error = exc.to_row_error()
        elif isinstance(exc, InputError):
            error = cls(kind=ErrorKind.INVALID_INPUT, message=detail)
        elif isinstance(exc, (InfermuxError, ValueError)) and detail:
            error = cls(kind=kind, message=detail)
        else:
            error = cls(kind=kind, message=f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__)
        if context:
            error = cls(kind=error.kind, message=f"{context}: {error.message}", status=error.status,
                        retryable=error.retryable)  # fmt: skip
        return error
