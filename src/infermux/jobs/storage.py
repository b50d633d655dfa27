"""Input and output URIs on pyarrow file systems (``s3://``, ``gs://``, ``hdfs://``, ``abfs://``, ...).

A job reads its input straight from the URI, as a stream. The job's durable state, the partial and
errors files that are appended row by row, cannot live on an object store (S3 has no append): it lives
in a local *job folder* (``job_dir``, by default ``infermux-jobs/<name>-<hash of the URI>`` under the
current directory), and the finished output is uploaded to the URI when the job ends. On S3 and GCS the
object appears only once its upload has completed; elsewhere it is written beside the target and moved.

pyarrow is imported only when a URI is used (``infermux[storage]``, or any Ray install). Credentials
and endpoints come from pyarrow's usual sources (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``,
``AWS_ENDPOINT_URL``, ...) or the URI's query string (``?endpoint_override=HOST:PORT&scheme=http``).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from infermux.errors import InputError, OutputError, install_hint

__all__ = [
    "RemoteFile",
    "check_job_dir",
    "check_output_uri",
    "is_uri",
    "job_folder",
    "open_remote",
    "read_lines",
    "shown",
    "upload",
]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
#: Query parameters that carry secrets (pyarrow's S3, GCS and Azure URI options): never shown.
_SECRET_PARAMS = {"secret_key", "session_token", "access_key", "account_key", "sas_token", "client_secret"}
#: File systems where an object appears only once its upload completes (no temporary name needed).
_ATOMIC_UPLOAD = {"s3", "gcs"}
#: The default parent of job folders, under the current directory.
JOBS_FOLDER = "infermux-jobs"
_READ_BUFFER = 1 << 20


def is_uri(path: object) -> bool:
    """True for ``scheme://...`` (two letters or more: ``C:\\...`` stays a local path)."""
    return isinstance(path, str) and bool(_SCHEME.match(path))


def shown(uri: str) -> str:
    """``uri`` for messages and logs: secrets in its query string (and a password) replaced by ``***``."""
    parts = urlsplit(uri)
    query = "&".join(f"{k}={'***' if k.lower() in _SECRET_PARAMS else v}" for k, v in parse_qsl(parts.query))
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _key(uri: str) -> str:
    """What names the object: scheme, bucket and path (the query only says how to reach it)."""
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{parts.path}"


@dataclass
class RemoteFile:
    """A file named by a URI: its pyarrow file system and its path there."""

    uri: str
    fs: Any
    path: str

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]


def open_remote(uri: str, *, output: bool = False) -> RemoteFile:
    """The file system of ``uri`` (no request is sent yet); a clear error when pyarrow cannot open it."""
    error = OutputError if output else InputError
    try:
        from pyarrow import fs as pafs
    except ImportError:
        raise error(
            f"{shown(uri)}: URIs are read and written through pyarrow, which is not installed. Install it with: "
            + install_hint("storage")
        ) from None
    try:
        filesystem, path = pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError, TypeError) as exc:  # ArrowInvalid is a ValueError
        raise error(
            f"{shown(uri)}: pyarrow cannot open this file system ({_first_line(exc, uri)}). Use a local path or a URI "
            "pyarrow reads: s3://BUCKET/KEY, gs://BUCKET/KEY, hdfs://HOST/PATH, abfs://..., file:///PATH."
        ) from None
    return RemoteFile(uri, filesystem, path)


def _first_line(exc: BaseException, uri: str | None = None) -> str:
    """The first line of ``exc``'s message, with ``uri`` (which may hold secrets) shown redacted."""
    text = str(exc).strip()
    if uri is not None:
        text = text.replace(uri, shown(uri))
        for key, value in parse_qsl(urlsplit(uri).query):
            if key.lower() in _SECRET_PARAMS and value:
                text = text.replace(value, "***")
    lines = text.splitlines()
    return lines[0] if lines else type(exc).__name__


def _explain(exc: BaseException) -> str:
    """What a file-system error means for the user, credentials first."""
    text = str(exc)
    if any(s in text for s in ("ACCESS_DENIED", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch")):
        return (
            "access denied: the credentials pyarrow found are missing, wrong or not allowed here. Set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE; GOOGLE_APPLICATION_CREDENTIALS for gs://)"
            ", and AWS_ENDPOINT_URL for an S3-compatible server"
        )
    if "NETWORK_CONNECTION" in text or "Could not connect" in text:
        return f"the storage server cannot be reached ({_first_line(exc)}); check AWS_ENDPOINT_URL or the network"
    return _first_line(exc)


def _not_found(remote: RemoteFile) -> str:
    """Why nothing is at ``remote``: on an object store, its bucket does not exist or has no such object."""
    if remote.fs.type_name not in _ATOMIC_UPLOAD:
        return "nothing at this path."
    bucket, _, key = remote.path.partition("/")
    if remote.fs.get_file_info(bucket).type.name == "NotFound":
        return f"bucket {bucket!r} does not exist."
    return f"bucket {bucket!r} has no object {key!r}."


def check_job_dir(job_dir: str | os.PathLike[str]) -> None:
    """A job folder is local: its partial and errors files are appended row by row, which no object store
    does (the output may still be a URI: it is uploaded when the job ends)."""
    if is_uri(str(job_dir)):
        raise OutputError(
            f"{shown(str(job_dir))}: job_dir must be a local folder: the job appends its partial and errors files "
            "row by row, which an object store cannot do. Give a local path (--output_path may stay a URI)."
        )


def read_lines(uri: str) -> Iterator[bytes]:
    """The raw lines of the file at ``uri`` (streamed); :class:`InputError` naming it when it cannot be read."""
    remote = open_remote(uri)
    where = shown(uri)
    try:
        info = remote.fs.get_file_info(remote.path)
        if info.type.name == "NotFound":
            raise InputError(f"input file not found: {_not_found(remote)} Check --input_path.", path=where)
        if info.type.name == "Directory":
            raise InputError("is a directory; --input_path must be a JSONL file.", path=where)
        stream = remote.fs.open_input_stream(remote.path, compression=None, buffer_size=_READ_BUFFER)
    except OSError as exc:
        raise InputError(f"cannot read the input: {_explain(exc)}.", path=where) from None
    try:
        with io.BufferedReader(stream, _READ_BUFFER) as handle:
            yield from handle
    except OSError as exc:
        raise InputError(f"reading the input failed: {_explain(exc)}. Rerun the same command.", path=where) from None


def check_output_uri(uri: str, input_path: str | None = None) -> RemoteFile:
    """Refuse an output URI that is the input, a folder, or in a bucket that does not exist or refuses us."""
    remote = open_remote(uri, output=True)
    where = shown(uri)
    if input_path is not None and is_uri(input_path) and _key(input_path) == _key(uri):
        raise OutputError(
            f"{where}: --output_path is the input file; answers would replace your prompts. "
            "Choose another --output_path."
        )
    try:
        if remote.fs.get_file_info(remote.path).type.name == "Directory":
            raise OutputError(f"{where}: is a directory; --output_path must name a file.")
        if remote.fs.type_name in _ATOMIC_UPLOAD:
            bucket = remote.path.split("/", 1)[0]
            if remote.fs.get_file_info(bucket).type.name == "NotFound":
                raise OutputError(
                    f"{where}: bucket {bucket!r} does not exist. Create it or choose another --output_path."
                )
        else:
            parent = remote.path.rstrip("/").rsplit("/", 1)[0]
            if parent and parent != remote.path:
                remote.fs.create_dir(parent, recursive=True)
    except OSError as exc:
        raise OutputError(f"{where}: cannot write the output there: {_explain(exc)}.") from None
    return remote


def job_folder(output_uri: str, job_dir: str | os.PathLike[str] | None = None) -> Path:
    """The local folder holding the partial and errors files of the job writing ``output_uri``."""
    if job_dir:
        check_job_dir(job_dir)
        return Path(job_dir)
    digest = hashlib.sha256(_key(output_uri).encode()).hexdigest()[:12]
    name = urlsplit(output_uri).path.rstrip("/").rsplit("/", 1)[-1] or "output"
    return Path(JOBS_FOLDER) / f"{name}-{digest}"


def upload(local: Path, uri: str) -> None:
    """Copy ``local`` to ``uri`` so that a reader sees the whole file or nothing (the previous version)."""
    from pyarrow import fs as pafs

    remote = open_remote(uri, output=True)
    source = pafs.LocalFileSystem()
    try:
        if remote.fs.type_name in _ATOMIC_UPLOAD:  # the object appears when its (multipart) upload completes
            pafs.copy_files(str(local), remote.path, source_filesystem=source, destination_filesystem=remote.fs)
            return
        parent, _, name = remote.path.rpartition("/")
        tmp = f"{parent}/.{name}.{os.getpid()}.tmp" if parent else f".{name}.{os.getpid()}.tmp"
        pafs.copy_files(str(local), tmp, source_filesystem=source, destination_filesystem=remote.fs)
        remote.fs.move(tmp, remote.path)
    except OSError as exc:
        raise OutputError(
            f"{shown(uri)}: could not upload the output: {_explain(exc)}. The answers are kept in {local.parent}: "
            "rerun the same command to upload them."
        ) from None
