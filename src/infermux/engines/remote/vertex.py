"""GOOGLE_VERTEX: Vertex AI's OpenAI-compatible chat-completions endpoint, with Google OAuth.

* URL: the SPEC's template
  ``https://{region}-aiplatform.googleapis.com/v1beta1/projects/{project_id}/locations/{region}/endpoints/openapi/chat/completions``;
  ``remote_params.api_url`` may replace it (placeholders are filled in). ``project_id`` and
  ``region`` come from ``model.model_kwargs`` or the environment (``PROJECT_ID`` /
  ``GOOGLE_CLOUD_PROJECT``, ``REGION`` / ``GOOGLE_CLOUD_REGION`` / ``GOOGLE_CLOUD_LOCATION``).
* Auth: ``Authorization: Bearer <access token>`` from google-auth application-default credentials,
  or from a service-account JSON file given as ``remote_params.api_key`` (a path). The token is
  cached and refreshed only when it is missing or within five minutes of expiry, once for all
  workers (Oumi refreshes on every request).
* Body: OpenAI chat completions (shared with REMOTE), limited to what Vertex accepts for Google
  models; images as ``data:`` URLs or ``gs://`` URIs (plain http(s) image URLs are not accepted).
"""

from __future__ import annotations

import asyncio
import datetime
import os
from pathlib import Path
from typing import Any, ClassVar

from infermux.configs.engine_type import InferenceEngineType
from infermux.configs.generation_params import GenerationParams
from infermux.configs.model_params import ModelParams
from infermux.configs.remote_params import RemoteParams
from infermux.engines.capabilities import Capabilities
from infermux.engines.remote.openai_compatible import OPENAI_PARAMS, RemoteInferenceEngine
from infermux.engines.remote.transport import HttpRequest, default_error_message
from infermux.errors import AuthenticationError, ConfigError, RowError
from infermux.types import Conversation, Type

__all__ = ["VERTEX_URL_TEMPLATE", "GoogleVertexInferenceEngine", "TokenCache"]

VERTEX_URL_TEMPLATE = (
    "https://{region}-aiplatform.googleapis.com/v1beta1/projects/{project_id}/locations/{region}"
    "/endpoints/openapi/chat/completions"
)
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
_PROJECT_ENV = ("PROJECT_ID", "GOOGLE_CLOUD_PROJECT")
_REGION_ENV = ("REGION", "GOOGLE_CLOUD_REGION", "GOOGLE_CLOUD_LOCATION")
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


def _load_credentials(key_file: str | None) -> Any:
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


class GoogleVertexInferenceEngine(RemoteInferenceEngine):
    """Gemini (and Model Garden) models on Vertex AI through its OpenAI-compatible endpoint."""

    engine_type = InferenceEngineType.GOOGLE_VERTEX
    capabilities: ClassVar[Capabilities] = Capabilities(
        generation_params=OPENAI_PARAMS - {"logit_bias"},
        guided_decoding=frozenset({"json"}),
        images=True,
        notes=("Images must be files, bytes, data: URLs or gs:// URIs.",),
    )
    extra = "vertex"
    default_api_url = VERTEX_URL_TEMPLATE
    api_key_env = None
    requires_api_key = False
    default_num_workers = 8
    provider = "Vertex AI"
    supports_batch_api = False  # Vertex batch prediction is a different API
    env_vars: ClassVar[dict[str, str]] = {
        "PROJECT_ID / GOOGLE_CLOUD_PROJECT": "the Google Cloud project (or `model.model_kwargs.project_id`)",
        "REGION / GOOGLE_CLOUD_REGION / GOOGLE_CLOUD_LOCATION": "the region (or `model.model_kwargs.region`)",
        "GOOGLE_APPLICATION_CREDENTIALS": "a service-account file for application-default credentials "
        "(or `remote_params.api_key` set to its path, or `gcloud auth application-default login`)",
    }

    def __init__(
        self,
        model_params: ModelParams,
        *,
        generation_params: GenerationParams | None = None,
        remote_params: RemoteParams | None = None,
        strict: bool = False,
        credentials: Any = None,
    ) -> None:
        super().__init__(model_params, generation_params=generation_params, remote_params=remote_params, strict=strict)
        key = (remote_params or RemoteParams()).resolve_api_key()
        if key and not Path(key).expanduser().is_file():
            raise ConfigError(
                "GOOGLE_VERTEX authenticates with Google credentials, not an API key: set remote_params.api_key "
                "to a service-account JSON file path, or leave it unset to use application-default credentials."
            )
        if credentials is None:
            credentials = _load_credentials(str(Path(key).expanduser()) if key else None)
        self.tokens = TokenCache(credentials)
        self._token = ""

    def endpoint_url(self, api_url: str) -> str:
        kwargs = self.model_params.model_kwargs
        needed = {name for name in ("project_id", "region") if "{" + name + "}" in api_url}
        values: dict[str, str] = {}
        for name, env_names in (("project_id", _PROJECT_ENV), ("region", _REGION_ENV)):
            if name not in needed:
                continue
            value = kwargs.get(name) or next((os.environ[e] for e in env_names if os.environ.get(e)), None)
            if not value:
                raise ConfigError(
                    f"GOOGLE_VERTEX needs the Google Cloud {name}: set model.model_kwargs.{name} or the "
                    f"{' / '.join(env_names)} environment variable (or give the full remote_params.api_url)."
                )
            values[name] = str(value)
        return api_url.format(**values) if needed else api_url

    def build_headers(self, api_key: str | None) -> dict[str, str]:
        return {"Content-Type": "application/json"}

    def served_model_name(self) -> str:
        name = self.model_params.model_name
        return name if "/" in name else f"google/{name}"

    def check_conversation(self, conversation: Conversation) -> RowError | None:
        for message in conversation.messages:
            for item in message.images:
                if item.type == Type.IMAGE_URL and str(item.content).startswith(("http://", "https://")):
                    return RowError(
                        kind="unsupported_input",
                        message="GOOGLE_VERTEX takes images as files, bytes, data: URLs or gs:// URIs, "
                        f"not http(s) URLs ({str(item.content)[:80]}).",
                    )
        return super().check_conversation(conversation)

    async def _infer_chunk(
        self, conversations: list[Conversation], generation: GenerationParams
    ) -> list[Conversation | RowError]:
        try:
            self._token = await self.tokens.token()
        except AuthenticationError as exc:
            return [exc.to_row_error() for _ in conversations]
        results = await super()._infer_chunk(conversations, generation)
        if any(isinstance(r, RowError) and r.status == 401 for r in results):
            self.tokens.stale = True  # revoked or expired early: the next request gets a new token
        return results

    def build_request(self, conversation: Conversation, generation: GenerationParams) -> HttpRequest:
        headers = {**self.headers, "Authorization": f"Bearer {self._token}"}
        return HttpRequest.json(self.url, self.build_body(conversation, generation), headers)

    def error_message(self, status: int, body: bytes) -> str:
        # Vertex may wrap Google's error object in a one-element list.
        text = body.strip()
        if text.startswith(b"[") and text.endswith(b"]"):
            text = text[1:-1]
        message = default_error_message(status, text)
        if status in (401, 403):
            message += (
                " Check the Google credentials (gcloud auth application-default login, "
                "GOOGLE_APPLICATION_CREDENTIALS or remote_params.api_key as a service-account file)."
            )
        return message
