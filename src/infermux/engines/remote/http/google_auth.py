"""Google OAuth for Vertex AI: credentials from google-auth, and an access token refreshed only near expiry.

``google.auth`` is imported when credentials are loaded or refreshed, never at module import.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

from infermux.errors import AuthenticationError

__all__ = ["SCOPES", "TokenCache", "load_credentials"]

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
_REFRESH_MARGIN = datetime.timedelta(minutes=5)


class TokenCache:
    """An OAuth access token from google-auth credentials, refreshed only near expiry.

    ``credentials`` is any google-auth ``Credentials`` (``token``, ``expiry``, ``refresh(request)``).
    Refreshing is blocking I/O: it runs in a thread, under a lock, so concurrent workers wait for one
    refresh instead of each starting their own.
    """

    def __init__(self, credentials: Any, margin: datetime.timedelta = _REFRESH_MARGIN) -> None:
        self.credentials = credentials
        self.margin = margin
        self.stale = False  # set when the server rejected the token: refresh before the next use
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"TokenCache(credentials={type(self.credentials).__name__})"

    def fresh(self) -> bool:
        creds = self.credentials
        if self.stale or not getattr(creds, "token", None):
            return False
        expiry = getattr(creds, "expiry", None)
        if expiry is None:
            return True
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)  # google-auth: naive UTC
        if expiry.tzinfo is not None:
            expiry = expiry.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return bool(expiry - now > self.margin)

    async def token(self) -> str:
        if not self.fresh():
            async with self._lock:
                if not self.fresh():
                    await asyncio.to_thread(self._refresh)
                    self.stale = False
        return str(self.credentials.token)

    def _refresh(self) -> None:
        from google.auth.exceptions import GoogleAuthError
        from google.auth.transport.requests import Request

        try:
            self.credentials.refresh(Request())
        except GoogleAuthError as exc:
            raise AuthenticationError(
                f"GOOGLE_VERTEX could not get an access token: {exc}. Run `gcloud auth application-default "
                "login`, or point remote_params.api_key (or GOOGLE_APPLICATION_CREDENTIALS) at a "
                "service-account JSON file.",
                kind="authentication",
            ) from None


def load_credentials(key_file: str | None) -> Any:
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    if key_file:
        from google.oauth2 import service_account

        return service_account.Credentials.from_service_account_file(key_file, scopes=list(SCOPES))
    try:
        credentials, _ = google.auth.default(scopes=list(SCOPES))
    except DefaultCredentialsError as exc:
        raise AuthenticationError(
            f"GOOGLE_VERTEX found no Google credentials ({exc}). Run `gcloud auth application-default login`, "
            "set GOOGLE_APPLICATION_CREDENTIALS, or set remote_params.api_key to a service-account JSON file.",
            kind="authentication",
        ) from None
    return credentials
