"""GOOGLE_VERTEX against the Vertex fake: URL template, OAuth token caching, body, errors."""

from __future__ import annotations

import datetime
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from infermux.configs import GenerationParams, InferenceConfig, ModelParams, RemoteParams
from infermux.engines.remote.vertex.engine import VERTEX_URL_TEMPLATE, GoogleVertexInferenceEngine
from infermux.errors import ConfigError
from infermux.types import ContentItem, Conversation, Message, Role, Type
from tests.fakes import FakeVertex, tiny_png

pytest.importorskip("google.auth", reason="needs the vertex extra (google-auth)")

PROJECT, REGION = "test-project", "us-central1"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeVertex]:
    with FakeVertex(project=PROJECT, location=REGION) as server:
        yield server


@pytest.fixture(autouse=True)
def _clean(fake: FakeVertex) -> None:
    fake.clear()
    fake.tokens_seen.clear()


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


class CountingCredentials:
    """Quacks like google-auth credentials; counts refreshes; registers its tokens with the fake."""

    def __init__(self, server: FakeVertex, lifetime: datetime.timedelta = datetime.timedelta(hours=1)):
        self.server = server
        self.lifetime = lifetime
        self.token: str | None = None
        self.expiry: datetime.datetime | None = None
        self.refreshes = 0
        self._lock = threading.Lock()

    def refresh(self, request: object) -> None:
        with self._lock:
            self.refreshes += 1
            self.token = f"token-{self.refreshes}"
            self.expiry = _utcnow() + self.lifetime
            self.server.valid_tokens.add(self.token)


def url(fake: FakeVertex) -> str:
    return VERTEX_URL_TEMPLATE.replace("https://{region}-aiplatform.googleapis.com", fake.url)


def engine(fake: FakeVertex, credentials: object, **generation: object) -> GoogleVertexInferenceEngine:
    return GoogleVertexInferenceEngine(
        ModelParams(model_name="gemini-2.0-flash", model_kwargs={"project_id": PROJECT, "region": REGION}),
        generation_params=GenerationParams(**generation),
        remote_params=RemoteParams(api_url=url(fake), num_workers=8, max_retries=1, retry_backoff_base=0.01),
        credentials=credentials,
    )


def conv(*turns: tuple[Role, str | list[ContentItem]]) -> Conversation:
    return Conversation(messages=[Message(role=r, content=c) for r, c in turns])


def test_one_token_refresh_serves_many_concurrent_rows(fake: FakeVertex) -> None:
    creds = CountingCredentials(fake)
    eng = engine(fake, creds)
    answers = eng.infer([conv((Role.USER, f"q{i}")) for i in range(24)])
    assert all("error" not in a.metadata for a in answers)
    assert creds.refreshes == 1
    assert set(fake.tokens_seen) == {"token-1"} and len(fake.tokens_seen) == 24
    eng.infer([conv((Role.USER, "again"))])  # a second job reuses the cached token
    assert creds.refreshes == 1


def test_token_is_refreshed_only_near_expiry(fake: FakeVertex) -> None:
    creds = CountingCredentials(fake)
    eng = engine(fake, creds)
    eng.infer([conv((Role.USER, "a"))])
    creds.expiry = _utcnow() + datetime.timedelta(minutes=2)  # inside the 5-minute margin
    eng.infer([conv((Role.USER, "b"))])
    assert creds.refreshes == 2 and fake.tokens_seen == ["token-1", "token-2"]


def test_body_is_openai_chat_for_google_models(fake: FakeVertex) -> None:
    creds = CountingCredentials(fake)
    conversation = conv(
        (Role.SYSTEM, "Be brief."),
        (Role.USER, "Hi."),
        (Role.ASSISTANT, "Hello."),
        (
            Role.USER,
            [ContentItem(type=Type.TEXT, content="And this?"), ContentItem(type=Type.IMAGE_BINARY, binary=tiny_png())],
        ),
    )
    [answer] = engine(fake, creds, max_new_tokens=30, stop_strings=["| images"], seed=3).infer([conversation])
    request = fake.requests[0]
    assert request.path == f"/v1beta1/projects/{PROJECT}/locations/{REGION}/endpoints/openapi/chat/completions"
    assert request.header("Authorization") == "Bearer token-1"
    body = request.json
    assert body["model"] == "google/gemini-2.0-flash"
    assert body["max_tokens"] == 30 and body["stop"] == ["| images"] and body["seed"] == 3
    assert body["messages"][3]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert answer.last_message.text == "system=Be brief. | turns=3 "
    assert answer.metadata["usage"]["prompt_tokens"] > 0


def test_http_image_urls_are_rejected_per_row(fake: FakeVertex) -> None:
    creds = CountingCredentials(fake)
    rows = [conv((Role.USER, [ContentItem(type=Type.IMAGE_URL, content="https://x/y.png")])), conv((Role.USER, "ok"))]
    answers = engine(fake, creds).infer(rows)
    assert answers[0].metadata["error"]["kind"] == "unsupported_input"
    assert answers[1].last_message.text.endswith("last=ok")


def test_rejected_token_is_a_clear_authentication_error(fake: FakeVertex) -> None:
    creds = CountingCredentials(fake)
    eng = engine(fake, creds)
    eng.infer([conv((Role.USER, "warm up"))])
    fake.valid_tokens.discard("token-1")  # revoked server-side while still cached
    [answer] = eng.infer([conv((Role.USER, "hi"))])
    error = answer.metadata["error"]
    assert error["kind"] == "authentication" and error["status"] == 401
    assert "invalid authentication credentials" in error["message"]
    assert "application-default" in error["message"]
    [again] = eng.infer([conv((Role.USER, "after a new token"))])  # the rejected token is not reused
    assert "error" not in again.metadata and creds.refreshes == 2 and fake.tokens_seen[-1] == "token-2"


def test_errors_wrapped_in_a_list_are_understood(fake: FakeVertex) -> None:
    creds = CountingCredentials(fake)
    fake.fail_next(400, "Invalid value at 'messages'", body=[fake.error_body(400, "Invalid value at 'messages'")])
    [answer] = engine(fake, creds).infer([conv((Role.USER, "hi"))])
    assert answer.metadata["error"]["message"].endswith("Invalid value at 'messages'")


def test_project_and_region_from_environment_or_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PROJECT_ID", "GOOGLE_CLOUD_PROJECT", "REGION", "GOOGLE_CLOUD_REGION", "GOOGLE_CLOUD_LOCATION"):
        monkeypatch.delenv(name, raising=False)
    creds = object()
    with pytest.raises(ConfigError, match="PROJECT_ID"):
        GoogleVertexInferenceEngine(ModelParams(model_name="google/gemini-2.0-flash"), credentials=creds)
    monkeypatch.setenv("PROJECT_ID", "p1")
    monkeypatch.setenv("REGION", "europe-west4")
    eng = GoogleVertexInferenceEngine(ModelParams(model_name="google/gemini-2.0-flash"), credentials=creds)
    assert eng.url == (
        "https://europe-west4-aiplatform.googleapis.com/v1beta1/projects/p1/locations/europe-west4"
        "/endpoints/openapi/chat/completions"
    )


def test_project_and_region_as_arguments_or_named_variables(fake: FakeVertex, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PROJECT_ID", "GOOGLE_CLOUD_PROJECT", "REGION", "GOOGLE_CLOUD_REGION", "GOOGLE_CLOUD_LOCATION"):
        monkeypatch.delenv(name, raising=False)
    creds = object()
    model = ModelParams(model_name="google/gemini-2.0-flash")
    eng = GoogleVertexInferenceEngine(model, project_id="p", region="r", credentials=creds)
    assert eng.url == (
        "https://r-aiplatform.googleapis.com/v1beta1/projects/p/locations/r/endpoints/openapi/chat/completions"
    )
    monkeypatch.setenv("MY_PROJECT", "p2")
    monkeypatch.setenv("MY_REGION", "asia-east1")
    eng = GoogleVertexInferenceEngine(
        model, project_id_env_key="MY_PROJECT", region_env_key="MY_REGION", credentials=creds
    )
    assert "/projects/p2/locations/asia-east1/" in eng.url and eng.url.startswith("https://asia-east1-")
    with pytest.raises(ConfigError, match="MY_UNSET_REGION"):
        GoogleVertexInferenceEngine(model, project_id="p", region_env_key="MY_UNSET_REGION", credentials=creds)
    # End to end: the arguments fill the URL template that points at the fake.
    creds_ok = CountingCredentials(fake)
    eng = GoogleVertexInferenceEngine(
        ModelParams(model_name="gemini-2.0-flash"),
        remote_params=RemoteParams(api_url=url(fake), max_retries=0),
        credentials=creds_ok,
        project_id=PROJECT,
        region=REGION,
    )
    [answer] = eng.infer([conv((Role.USER, "args"))])
    assert answer.last_message.text.endswith("last=args"), answer.metadata
    # A config passed to infer rebuilds the engine for that call: the arguments carry over.
    per_call = InferenceConfig(remote_params=RemoteParams(api_url=url(fake), max_retries=1))
    [answer] = eng.infer([conv((Role.USER, "per call"))], per_call)
    assert answer.last_message.text.endswith("last=per call"), answer.metadata


def test_api_key_must_be_a_service_account_file() -> None:
    with pytest.raises(ConfigError, match="service-account JSON file"):
        GoogleVertexInferenceEngine(
            ModelParams(model_name="g", model_kwargs={"project_id": "p", "region": "r"}),
            remote_params=RemoteParams(api_key="AIza-not-a-file"),
        )


def _service_account_file(tmp_path: Path, token_uri: str) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    info = {
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": f"infermux-test@{PROJECT}.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": token_uri,
    }
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(info))
    return path


def test_service_account_file_through_real_google_auth(fake: FakeVertex, tmp_path: Path) -> None:
    key_file = _service_account_file(tmp_path, fake.url + "/token")
    eng = GoogleVertexInferenceEngine(
        ModelParams(model_name="gemini-2.0-flash", model_kwargs={"project_id": PROJECT, "region": REGION}),
        remote_params=RemoteParams(api_url=url(fake), api_key=str(key_file), num_workers=4),
    )
    fake.token_grants.clear()
    answers = eng.infer([conv((Role.USER, f"q{i}")) for i in range(6)])
    assert all("error" not in a.metadata for a in answers)
    assert len(fake.token_grants) == 1  # one signed-JWT exchange for all rows
    assert fake.token_grants[0]["iss"] == f"infermux-test@{PROJECT}.iam.gserviceaccount.com"
    assert len(set(fake.tokens_seen)) == 1 and fake.tokens_seen[0].startswith("ya29.fake-")
    assert str(key_file) not in repr(eng)


def test_application_default_credentials(fake: FakeVertex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(_service_account_file(tmp_path, fake.url + "/token")))
    eng = GoogleVertexInferenceEngine(
        ModelParams(model_name="gemini-2.0-flash", model_kwargs={"project_id": PROJECT, "region": REGION}),
        remote_params=RemoteParams(api_url=url(fake)),
    )
    [answer] = eng.infer([conv((Role.USER, "adc"))])
    assert answer.last_message.text.endswith("last=adc")


def test_tool_calls_three_turns_and_parallel_false_not_sent(fake: FakeVertex) -> None:
    weather = {"type": "function", "function": {"name": "get_weather",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}  # fmt: skip
    clock = {"type": "function", "function": {"name": "get_time"}}
    ask = Conversation.model_validate({"messages": [{"role": "user", "content": "hi"}], "tools": [weather, clock]})
    eng = engine(fake, CountingCredentials(fake), tool_choice="required", parallel_tool_calls=False)
    [first] = eng.infer([ask])
    assert "error" not in first.metadata, first.metadata.get("error")
    assert "parallel_tool_calls" not in fake.requests[-1].json and fake.requests[-1].json["tool_choice"] == "required"
    calls = first.last_message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather"] and first.metadata["finish_reason"] == "tool_calls"
    result = Message(role=Role.TOOL, content="sunny", tool_call_id=calls[0].id)
    follow = first.model_copy(update={"messages": [*first.messages, result]})
    [second] = engine(fake, CountingCredentials(fake), tool_choice="none").infer([follow])
    assert "error" not in second.metadata, second.metadata.get("error")
    assert "sunny" in second.last_message.text
