"""GOOGLE_GEMINI against the Gemini API fake (tests/fakes/gemini.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from pydantic import BaseModel

from infermux.configs import GenerationParams, ModelParams, RemoteParams
from infermux.configs.generation_params import GuidedDecodingParams
from infermux.engines.remote.gemini.engine import GoogleGeminiInferenceEngine, generation_config
from infermux.errors import AuthenticationError
from infermux.types import ContentItem, Conversation, Message, Role, Type
from tests.fakes import FakeGemini, tiny_png

KEY = "gemini-test-key"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeGemini]:
    with FakeGemini(api_key=KEY) as server:
        yield server


@pytest.fixture(autouse=True)
def _clean(fake: FakeGemini) -> None:
    fake.clear()


def engine(url: str, key: str | None = KEY, model: str = "gemini-2.0-flash", **generation: object):
    remote = RemoteParams(api_url=url, api_key=key, max_retries=2, retry_backoff_base=0.01, num_workers=4)
    return GoogleGeminiInferenceEngine(
        ModelParams(model_name=model), generation_params=GenerationParams(**generation), remote_params=remote
    )


def conv(*turns: tuple[Role, str | list[ContentItem]]) -> Conversation:
    return Conversation(messages=[Message(role=r, content=c) for r, c in turns])


def test_roles_system_images_and_generation_config(fake: FakeGemini) -> None:
    conversation = conv(
        (Role.SYSTEM, "Be short."),
        (Role.USER, "Hi."),
        (Role.ASSISTANT, "Hello."),
        (
            Role.USER,
            [ContentItem(type=Type.IMAGE_BINARY, binary=tiny_png()), ContentItem(type=Type.TEXT, content="A?")],
        ),
        (Role.USER, [ContentItem(type=Type.IMAGE_URL, content="https://example.com/b.png")]),
    )
    [answer] = engine(fake.url, max_new_tokens=40, temperature=0.3, seed=7, stop_strings=["| last"]).infer(
        [conversation]
    )
    request = fake.requests[0]
    assert request.path == "/v1beta/models/gemini-2.0-flash:generateContent"
    assert request.header("x-goog-api-key") == KEY and "key" not in request.query
    body = request.json
    assert body["systemInstruction"] == {"parts": [{"text": "Be short."}]}
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    parts = body["contents"][2]["parts"]
    assert parts[0]["inlineData"]["mimeType"] == "image/png"
    assert parts[1] == {"text": "A?"}
    assert parts[2] == {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/b.png"}}
    assert body["generationConfig"] == {
        "maxOutputTokens": 40,
        "temperature": 0.3,
        "topP": 1.0,
        "stopSequences": ["| last"],
        "seed": 7,
    }
    assert answer.last_message.text == "system=Be short. | turns=3 | images=2 "
    assert answer.metadata["finish_reason"] == "stop"
    assert answer.metadata["usage"]["total_tokens"] > 0


def test_max_tokens_finish_reason(fake: FakeGemini) -> None:
    [answer] = engine(fake.url, max_new_tokens=2).infer([conv((Role.USER, "hello there"))])
    assert answer.last_message.text == "system=- |"
    assert answer.metadata["finish_reason"] == "length"


class Address(BaseModel):
    street: str
    zip: str | None = None


class Person(BaseModel):
    name: str
    age: int
    home: Address
    tags: list[str] = []


def test_guided_json_schema_is_inlined_for_gemini(fake: FakeGemini) -> None:
    schema = Person.model_json_schema()
    assert "$defs" in schema  # the pydantic schema uses $ref: the fake would reject it as is
    [answer] = engine(fake.url, guided_decoding=GuidedDecodingParams(json=Person)).infer([conv((Role.USER, "who?"))])
    config = fake.requests[0].json["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    sent = config["responseSchema"]
    assert "$ref" not in json.dumps(sent) and "$defs" not in sent
    zip_code = sent["properties"]["home"]["properties"]["zip"]
    assert zip_code["type"] == "STRING" and zip_code["nullable"] is True and "anyOf" not in zip_code
    assert sent["propertyOrdering"] == ["name", "age", "home", "tags"]
    Person.model_validate_json(answer.last_message.text)


def test_guided_choice_uses_enum_mime_type(fake: FakeGemini) -> None:
    [answer] = engine(fake.url, guided_decoding=GuidedDecodingParams(choice=["yes", "no"])).infer(
        [conv((Role.USER, "ok?"))]
    )
    config = fake.requests[0].json["generationConfig"]
    assert config["responseMimeType"] == "text/x.enum"
    assert config["responseSchema"] == {"type": "STRING", "enum": ["yes", "no"]}
    assert answer.last_message.text == "yes"


def test_invalid_key_names_the_variable(fake: FakeGemini) -> None:
    [answer] = engine(fake.url, key="wrong-key").infer([conv((Role.USER, "hi"))])
    error = answer.metadata["error"]
    assert error["status"] == 400 and "API key not valid" in error["message"]
    assert "GEMINI_API_KEY" in error["message"] and "wrong-key" not in error["message"]
    assert len(fake.requests) == 1


def test_missing_key_is_refused_up_front(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    with pytest.raises(AuthenticationError, match="GEMINI_API_KEY"):
        GoogleGeminiInferenceEngine(ModelParams(model_name="gemini-2.0-flash"))


def test_unknown_model_fails_the_row_with_googles_message(fake: FakeGemini) -> None:
    [answer] = engine(fake.url, model="not-a-model").infer([conv((Role.USER, "hi"))])
    assert answer.metadata["error"]["status"] == 404
    assert "models/not-a-model is not found" in answer.metadata["error"]["message"]


def test_a_bad_row_fails_alone_and_overload_is_retried(fake: FakeGemini) -> None:
    rows = [
        conv((Role.USER, "one")),
        conv((Role.USER, [ContentItem(type=Type.IMAGE_PATH, content="/nonexistent.png")])),
    ]
    fake.fail_next(503, "The model is overloaded.")
    answers = engine(fake.url).infer(rows)
    assert answers[0].last_message.text.endswith("last=one")
    assert answers[1].metadata["error"]["kind"] == "invalid_input"
    assert "/nonexistent.png" in answers[1].metadata["error"]["message"]


def test_more_than_five_stop_strings_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="at most 5 stop strings"):
        generation_config(GenerationParams(stop_strings=list("abcdef")))


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://h:1", "http://h:1/v1beta/models/gemini-x:generateContent"),
        ("http://h:1/v1beta/", "http://h:1/v1beta/models/gemini-x:generateContent"),
        ("http://h:1/v1/models/{model}:generateContent", "http://h:1/v1/models/gemini-x:generateContent"),
    ],
)
def test_api_url_forms(given: str, expected: str) -> None:
    assert engine(given, model="models/gemini-x").url == expected


def test_streaming_uses_stream_generate_content_sse(fake: FakeGemini) -> None:
    import asyncio

    conversation = conv((Role.USER, "stream please"))
    eng = engine(fake.url, max_new_tokens=64)
    [whole] = eng.infer([conversation])

    async def collect() -> tuple[list[str], Conversation]:
        deltas, final = [], None
        async for event in eng.astream(conversation):
            if event.final:
                final = event.conversation
            else:
                deltas.append(event.delta)
        assert final is not None
        return deltas, final

    deltas, final = asyncio.run(collect())
    request = fake.requests[-1]
    assert request.path.endswith(":streamGenerateContent") and request.query == {"alt": "sse"}
    assert len(deltas) > 3 and "".join(deltas) == whole.last_message.text == final.last_message.text
    assert final.metadata["finish_reason"] == "stop" and final.metadata["usage"] == whole.metadata["usage"]


def test_a_400_from_the_api_fails_that_row_with_googles_message(fake: FakeGemini) -> None:
    rows = [conv((Role.USER, "fine")), conv((Role.USER, "also fine"))]
    # Gemini accepts temperatures up to 2; infermux now refuses 3.0 before sending (test_capabilities),
    # so the API's own 400 for it is scripted here.
    fake.fail_next(400, "Invalid value at generation_config.temperature: 3.0 is out of range", times=2)
    answers = engine(fake.url).infer(rows)
    for answer in answers:
        error = answer.metadata["error"]
        assert error["status"] == 400 and not error["retryable"]
        assert "generation_config.temperature: 3.0 is out of range" in error["message"]
    assert len(fake.requests) == 2  # a 400 is not retried


def test_seeds_outside_int32_are_mapped_into_it_the_same_way_every_time(fake: FakeGemini) -> None:
    sent = []
    for seed in (7, -1, 2**31, 2**63 - 1, 2**31, -(2**63)):
        fake.clear()
        [answer] = engine(fake.url, temperature=1.0, seed=seed).infer([conv((Role.USER, "hello"))])
        assert "error" not in answer.metadata, answer.metadata
        sent.append(fake.requests[0].json["generationConfig"]["seed"])
    assert sent[:2] == [7, -1]  # seeds Gemini takes go out unchanged
    assert all(-(2**31) <= s < 2**31 for s in sent) and sent[2] == sent[4] and len(set(sent)) == 5
