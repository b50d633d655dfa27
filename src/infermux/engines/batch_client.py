"""The client of a provider's batch API: what one protocol implements so that ``infermux batch`` runs on it.

The job layer's runner (:mod:`infermux.jobs.provider_batch`) owns everything a batch job has in common:
it reads the input, cuts it into batches within :attr:`BatchClient.limits`, keeps the batch record
beside the output (resumable at every step), maps results back to rows and records them through the
job loop's ``record_result``, priced at the batch rate. A protocol only speaks its wire format:

* :meth:`~BatchClient.custom_id`, :meth:`~BatchClient.encode`: one row as one request of the batch input;
* :meth:`~BatchClient.upload`, :meth:`~BatchClient.create`, :meth:`~BatchClient.find`: make one batch
  (``find`` recovers a batch whose creation was interrupted before its id was saved);
* :meth:`~BatchClient.retrieve`, :meth:`~BatchClient.results`: poll it and download what it answered;
* :meth:`~BatchClient.answer`, :meth:`~BatchClient.missing`: one result record as the row's answer or
  failure;
* :meth:`~BatchClient.cancel`, :meth:`~BatchClient.list` where the provider has them
  (:attr:`~BatchClient.can_cancel`, :attr:`~BatchClient.can_list`).

An engine hands out its client with ``batch_client()`` (None: no batch API); the client is used as
``async with client:`` (its connections open inside).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from infermux.errors import ConfigError

if TYPE_CHECKING:
    from infermux.configs.generation_params import GenerationParams
    from infermux.errors import RowError
    from infermux.types import Conversation

__all__ = ["BatchClient", "BatchInfo", "BatchInput", "BatchLimits"]


@dataclass(frozen=True)
class BatchLimits:
    """How much one batch may hold: ``max_requests`` requests and ``max_bytes`` bytes of input, where
    each request counts its encoding plus ``separator`` bytes and the input adds ``envelope`` bytes."""

    max_requests: int
    max_bytes: int
    separator: int = 0
    envelope: int = 0
    name: str = "limit"
    """How the byte limit is named in the error of a request too large for any batch."""
    min_requests: int = 1
    """The fewest requests the provider takes in one batch: a smaller batch is not sent (its rows fail as
    ``batch_failed``, and ``infermux batch run`` answers them online)."""


@dataclass
class BatchInfo:
    """One batch as the provider last described it."""

    id: str
    status: str | None
    """The provider's own word for it (shown to the user)."""
    ended: bool
    """No request of it will run any more: its results are final."""
    request_counts: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    """Why the batch as a whole failed, one line each."""
    output_file_id: str | None = None
    """Where the provider put the results, when it names a place for them (a file id, a URI)."""
    error_file_id: str | None = None


@dataclass(frozen=True)
class BatchInput:
    """One batch to create: its requests in input order, and what identifies it to a later run."""

    name: str
    """Unique to the job and the batch: a file name for the upload."""
    requests: list[bytes]
    """Each request as :meth:`BatchClient.encode` made it."""
    tag: dict[str, str]
    """The job and the batch, for providers that keep metadata on a batch (found again by it)."""
    started_at: str | None = None
    """When its creation was first asked for (ISO 8601, UTC), for providers that keep no metadata."""
    input_id: str | None = None
    """What :meth:`BatchClient.upload` returned for it, once uploaded (providers that keep no metadata
    find a batch by its input)."""


class BatchClient(abc.ABC):
    """One protocol's batch API. See the module docstring."""

    #: The provider has a call to cancel a batch / to list the account's batches.
    can_cancel: ClassVar[bool] = False
    can_list: ClassVar[bool] = False

    #: The endpoint the requests go to, and the completion window asked for (kept in the batch record).
    endpoint: str
    completion_window: str
    limits: BatchLimits
    #: The engine's name, for messages.
    name: str

    async def __aenter__(self) -> BatchClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    # ------------------------------------------------------------------ rows <-> requests
    def custom_id(self, row_id: str) -> str:
        """The id a request of this row carries in the batch (the row id, or a form the provider accepts)."""
        return row_id

    @abc.abstractmethod
    def encode(self, custom_id: str, conversation: Conversation, generation: GenerationParams) -> bytes:
        """One row as one request of the batch input: the body the engine would send online, wrapped as
        the protocol wants it. Raise ``InfermuxError``, ``ValueError`` or ``OSError`` for a row that cannot
        be sent (it fails as ``invalid_input`` at fetch)."""

    @abc.abstractmethod
    def answer(self, conversation: Conversation, record: Any) -> Conversation | RowError:
        """The row answered from its result ``record`` (as :meth:`results` returned it), or its failure.
        Raise ``ValueError``, ``KeyError``, ``TypeError`` or ``IndexError`` for a record that cannot be read
        (the row fails as ``malformed_response``, worth answering online)."""

    @abc.abstractmethod
    def missing(self, info: BatchInfo) -> RowError:
        """The failure of a row that the ended batch ``info`` has no result for."""

    # ------------------------------------------------------------------ the provider's calls
    async def upload(self, batch: BatchInput) -> str | None:
        """Upload the batch's input and return its id; None where :meth:`create` takes the requests."""
        return None

    @abc.abstractmethod
    async def create(self, batch: BatchInput, input_id: str | None) -> BatchInfo:
        """Create the batch (``input_id`` from :meth:`upload`). Never blindly retried: a lost reply may
        hide a batch that was created."""

    @abc.abstractmethod
    async def find(self, batch: BatchInput) -> BatchInfo | None:
        """The batch an interrupted :meth:`create` of ``batch`` made, if any."""

    @abc.abstractmethod
    async def retrieve(self, batch_id: str) -> BatchInfo:
        """The batch as it is now."""

    @abc.abstractmethod
    async def results(self, info: BatchInfo) -> dict[str, Any]:
        """The result records of the ended batch ``info``, by custom id (in any order)."""

    async def cancel(self, batch_id: str) -> BatchInfo:
        """Ask the batch to stop; what it answered before stopping can still be fetched."""
        raise ConfigError(f"cancel is not available for {self.name}; cancel in the provider's console.")

    async def list(self, limit: int) -> list[dict[str, Any]]:
        """The account's ``limit`` most recent batches, most recent first, as the provider describes them."""
        raise ConfigError(f"list is not available for {self.name}.")
