"""Endpoint URLs from what the user gave as ``api_url``: one helper for every protocol.

A user may give a server's base URL (``http://host:8000``, ``.../v1``), a path behind a proxy
(``https://gw.example.com/api/proxy``) or the full endpoint, each possibly with a query string
(``?api-version=...``, ``?token=...``). :func:`endpoint_url` lets a protocol decide the *path* only;
the scheme, host and query are kept as given, so a query never ends up in the middle of the path.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

__all__ = ["append_path", "endpoint_url"]


def endpoint_url(api_url: str, build_path: Callable[[str], str]) -> str:
    """``api_url`` with its path replaced by ``build_path(path)`` (path without trailing ``/``).

    Raises ``ValueError`` when ``api_url`` is not an absolute URL."""
    parts = urlsplit(api_url.strip())
    if not parts.scheme or not parts.netloc:
        raise ValueError(f"api_url {api_url!r} is not an absolute http(s) URL (e.g. http://localhost:8000/v1)")
    path = build_path(parts.path.rstrip("/"))
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def append_path(endpoint: str, *, base: str = "", known_bases: tuple[str, ...] = ()) -> Callable[[str], str]:
    """A ``build_path`` that completes a path with ``endpoint`` unless it already ends with it.

    ``base`` (e.g. ``/v1``) is inserted first unless the path already ends with it or with one of
    ``known_bases``; ``endpoint_url(u, append_path("/messages", base="/v1"))`` maps ``http://h`` and
    ``http://h/v1`` to ``http://h/v1/messages`` and keeps ``http://h/v1/messages?x=1`` as it is."""

    def build(path: str) -> str:
        if path.endswith(endpoint):
            return path
        if base and not path.endswith((base, *known_bases)):
            path += base
        return path + endpoint

    return build
