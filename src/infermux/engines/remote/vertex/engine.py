"""GOOGLE_VERTEX: Vertex AI's OpenAI-compatible chat-completions endpoint, with Google OAuth.

* URL: the SPEC's template
  ``https://{region}-aiplatform.googleapis.com/v1beta1/projects/{project_id}/locations/{region}/endpoints/openapi/chat/completions``;
  ``remote_params.api_url`` may replace it (placeholders are filled in). ``project_id`` and
  ``region`` come, first found, from the constructor (``project_id=``, ``region=``), from the
  variables named by ``project_id_env_key`` / ``region_env_key`` (Oumi's arguments), from
  ``model.model_kwargs``, or from ``PROJECT_ID`` / ``GOOGLE_CLOUD_PROJECT`` and ``REGION`` /
  ``GOOGLE_CLOUD_REGION`` / ``GOOGLE_CLOUD_LOCATION``.
* Auth: ``Authorization: Bearer <access token>`` from google-auth application-default credentials,
  or from a service-account JSON file given as ``remote_params.api_key`` (a path). The token is
  cached and refreshed only when it is missing or within five minutes of expiry, once for all
  workers (Oumi refreshes on every request).
* Body: OpenAI chat completions (shared with REMOTE, tools included), limited to what Vertex accepts
  for Google models (no ``parallel_tool_calls``); images as ``data:`` URLs or ``gs://`` URIs (plain
  http(s) image URLs are not accepted).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from infermux.configs.generation_params import GenerationParams
from infermux.configs.remote_params import RemoteParams
from infermux.engines.capabilities import Capabilities
from infermux.engines.remote.http.google_auth import TokenCache, load_credentials
from infermux.engines.remote.http.transport import HttpRequest, default_error_message
from infermux.engines.remote.openai.engine import OPENAI_PARAMS, RemoteInferenceEngine
from infermux.engines.remote.openai.providers import SAMPLE_PARAMS
from infermux.errors import AuthenticationError, ConfigError, RowError
from infermux.types import Conversation, Type

if TYPE_CHECKING:
    from infermux.engines.remote.vertex.batches import VertexBatchClient

__all__ = ["VERTEX_URL_TEMPLATE", "GoogleVertexInferenceEngine"]

VERTEX_URL_TEMPLATE = (
    "https://{region}-aiplatform.googleapis.com/v1beta1/projects/{project_id}/locations/{region}"
    "/endpoints/openapi/chat/completions"
)
_PROJECT_ENV = ("PROJECT_ID", "GOOGLE_CLOUD_PROJECT")
_REGION_ENV = ("REGION", "GOOGLE_CLOUD_REGION", "GOOGLE_CLOUD_LOCATION")


class GoogleVertexInferenceEngine(RemoteInferenceEngine):
    """Gemini (and Model Garden) models on Vertex AI through its OpenAI-compatible endpoint."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        generation_params=(OPENAI_PARAMS | SAMPLE_PARAMS) - {"logit_bias"},
        guided_decoding=frozenset({"json"}),
        images=True,
        tools=True,
        batch_api=True,
        notes=(
            "Images must be files, bytes, data: URLs or gs:// URIs.",
            "Vertex takes no parallel_tool_calls: with false, only the answer's first call is kept.",
        ),
        max_items={"stop_strings": 5},
        value_ranges={"temperature": (0.0, 2.0)},
    )
    default_api_url = VERTEX_URL_TEMPLATE
    api_key_env = None
    requires_api_key = False
    default_num_workers = 8
    provider = "Vertex AI"
    env_vars: ClassVar[Mapping[str, str]] = {
        "PROJECT_ID / GOOGLE_CLOUD_PROJECT": "the Google Cloud project (or `model.model_kwargs.project_id`)",
        "REGION / GOOGLE_CLOUD_REGION / GOOGLE_CLOUD_LOCATION": "the region (or `model.model_kwargs.region`)",
        "GOOGLE_APPLICATION_CREDENTIALS": "a service-account file for application-default credentials "
        "(or `remote_params.api_key` set to its path, or `gcloud auth application-default login`)",
        "VERTEX_BATCH_GCS_URI": "`infermux batch` only: the gs://bucket/prefix batch prediction jobs read and write",
    }

    def __init__(
        self,
        *args: Any,
        credentials: Any = None,
        project_id: str | None = None,
        region: str | None = None,
        project_id_env_key: str | None = None,
        region_env_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        self._given_credentials = credentials  # tests hand in credentials; otherwise loaded in setup()
        # Oumi's arguments; read by endpoint_url during setup().
        self._given = {"project_id": project_id, "region": region}
        self._env_keys = {"project_id": project_id_env_key, "region": region_env_key}
        super().__init__(*args, **kwargs)

    def setup(self) -> None:
        super().setup()
        key = (self.remote_params or RemoteParams()).resolve_api_key()
        credentials = self._given_credentials
        if key and not Path(key).expanduser().is_file():
            raise ConfigError(
                "GOOGLE_VERTEX authenticates with Google credentials, not an API key: set remote_params.api_key "
                "to a service-account JSON file path, or leave it unset to use application-default credentials."
            )
        if credentials is None:
            credentials = load_credentials(str(Path(key).expanduser()) if key else None)
        self.tokens = TokenCache(credentials)
        self._token = ""

    def endpoint_url(self, api_url: str) -> str:
        needed = {name for name in ("project_id", "region") if "{" + name + "}" in api_url}
        values = {name: self._setting(name) for name in sorted(needed)}
        return api_url.format(**values) if needed else api_url

    def constructor_extras(self) -> dict[str, Any]:
        extras = {**self._given, **{f"{k}_env_key": v for k, v in self._env_keys.items()}}
        kept = {k: v for k, v in extras.items() if v}
        if self.remote_params is None or self.remote_params.api_key is None:
            kept["credentials"] = self.tokens.credentials  # not from a key file: nothing to reload
        return kept

    def _setting(self, name: str) -> str:
        """``project_id`` or ``region``: the constructor's value, else the variable its ``*_env_key``
        names (which must then be set), else ``model.model_kwargs``, else the usual variables."""
        given = getattr(self, "_given", {}).get(name)
        if given:
            return given
        env_key = getattr(self, "_env_keys", {}).get(name)
        if env_key:
            if not os.environ.get(env_key):
                raise ConfigError(
                    f"GOOGLE_VERTEX reads the Google Cloud {name} from the environment variable {env_key} "
                    f"({name}_env_key), which is not set: export {env_key}=<{name}>."
                )
            return os.environ[env_key]
        env_names = _PROJECT_ENV if name == "project_id" else _REGION_ENV
        value = self.model_params.model_kwargs.get(name) or next(
            (os.environ[e] for e in env_names if os.environ.get(e)), None
        )
        if not value:
            raise ConfigError(
                f"GOOGLE_VERTEX needs the Google Cloud {name}: pass {name}= (or {name}_env_key=) to the engine, "
                f"set model.model_kwargs.{name} or the {' / '.join(env_names)} environment variable "
                "(or give the full remote_params.api_url)."
            )
        return str(value)

    def build_headers(self, api_key: str | None) -> dict[str, str]:
        return {"Content-Type": "application/json"}

    def batch_client(self) -> VertexBatchClient:
        """Batch prediction jobs with files in Cloud Storage (:mod:`infermux.engines.remote.vertex.batches`)."""
        from infermux.engines.remote.vertex.batches import VertexBatchClient

        return VertexBatchClient(self)

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

    def build_body(self, conversation: Conversation, generation: GenerationParams) -> dict[str, Any]:
        body = super().build_body(conversation, generation)
        body.pop("parallel_tool_calls", None)  # not among the OpenAI parameters Vertex accepts
        return body

    def parse_reply(self, conversation: Conversation, data: Any) -> Conversation:
        answer = super().parse_reply(conversation, data)
        calls = answer.last_message.tool_calls
        if calls and len(calls) > 1 and not self.generation_params.parallel_tool_calls:
            last = answer.messages[-1].model_copy(update={"tool_calls": calls[:1]})
            return answer.model_copy(update={"messages": [*answer.messages[:-1], last]})
        return answer

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
