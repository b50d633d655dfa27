"""SGLANG against the SGLang /generate fake, with the default model's real tokenizer and chat template."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from infermux.configs import GenerationParams, ModelParams, RemoteParams
from infermux.configs.generation_params import GuidedDecodingParams
from infermux.engines.remote.sglang import SGLangInferenceEngine, choice_regex
from infermux.errors import ModelNotFoundError
from infermux.models.default import DEFAULT_MODEL_ALIAS
from infermux.types import ContentItem, Conversation, Message, Role, Type
from tests.fakes import FakeSGLang, tiny_png

pytest.importorskip("transformers", reason="SGLANG renders prompts with a local tokenizer")

KEY = "sglang-secret"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeSGLang]:
    with FakeSGLang(api_key=KEY) as server:
        yield server


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    """The default model's tokenizer, loaded once through the engine's own loader."""
    eng = SGLangInferenceEngine(
        ModelParams(model_name=DEFAULT_MODEL_ALIAS), remote_params=RemoteParams(api_url="http://127.0.0.1:9")
    )
    return eng.tokenizer


@pytest.fixture(autouse=True)
def _clean(fake: FakeSGLang) -> None:
    fake.clear()


def engine(fake: FakeSGLang, tokenizer: Any, key: str | None = KEY, **generation: Any) -> SGLangInferenceEngine:
    return SGLangInferenceEngine(
        ModelParams(model_name=DEFAULT_MODEL_ALIAS),
        generation_params=GenerationParams(**generation),
        remote_params=RemoteParams(api_url=fake.url, api_key=key, max_retries=1, retry_backoff_base=0.01),
        tokenizer=tokenizer,
    )


def conv(*turns: tuple[Role, str | list[ContentItem]]) -> Conversation:
    return Conversation(messages=[Message(role=r, content=c) for r, c in turns])


def test_prompt_is_chat_templated_and_sampling_params_mapped(fake: FakeSGLang, tokenizer: Any) -> None:
    conversation = conv((Role.SYSTEM, "Be terse."), (Role.USER, "Hi."), (Role.ASSISTANT, "Hey."), (Role.USER, "2+2?"))
    eng = engine(fake, tokenizer, max_new_tokens=50, temperature=0.7, top_p=0.9, min_p=0.05, stop_strings=["| last"])
    [answer] = eng.infer([conversation])
    request = fake.requests[0]
    assert request.path == "/generate" and request.header("Authorization") == f"Bearer {KEY}"
    body = request.json
    assert body["text"].startswith("<|im_start|>system\nBe terse.<|im_end|>")
    assert body["text"].endswith("<|im_start|>assistant\n")
    assert body["sampling_params"] == {
        "max_new_tokens": 50,
        "temperature": 0.7,
        "top_p": 0.9,
        "min_p": 0.05,
        "stop": ["| last"],
    }
    assert answer.last_message.text == "system=Be terse. | turns=3 | images=0 "
    assert answer.metadata["finish_reason"] == "stop"
    assert answer.metadata["usage"]["prompt_tokens"] > 0


def test_images_go_to_image_data(fake: FakeSGLang, tokenizer: Any) -> None:
    png = tiny_png()
    conversation = conv(
        (Role.USER, [ContentItem(type=Type.IMAGE_BINARY, binary=png), ContentItem(type=Type.TEXT, content="what?")])
    )
    [answer] = engine(fake, tokenizer).infer([conversation])
    assert fake.requests[0].json["image_data"] == [base64.b64encode(png).decode()]
    assert "images=1" in answer.last_message.text


@pytest.mark.parametrize(
    ("guided", "field", "expected_text"),
    [
        (GuidedDecodingParams(choice=["red", "green"]), "regex", "red"),
        (GuidedDecodingParams(regex="(yes|no)"), "regex", "yes"),
        (
            GuidedDecodingParams(json={"type": "object", "properties": {"n": {"type": "integer"}}}),
            "json_schema",
            '{"n": 1}',
        ),
    ],
)
def test_guided_decoding(
    fake: FakeSGLang, tokenizer: Any, guided: GuidedDecodingParams, field: str, expected_text: str
) -> None:
    [answer] = engine(fake, tokenizer, guided_decoding=guided).infer([conv((Role.USER, "pick"))])
    params = fake.requests[0].json["sampling_params"]
    assert field in params
    if field == "json_schema":
        assert isinstance(params["json_schema"], str) and json.loads(params["json_schema"])["type"] == "object"
    assert answer.last_message.text == expected_text


class _Pick(BaseModel):
    n: int


def test_guided_json_as_a_pydantic_instance_sends_its_classs_schema(fake: FakeSGLang, tokenizer: Any) -> None:
    guided = GuidedDecodingParams(json=_Pick(n=3))
    [answer] = engine(fake, tokenizer, guided_decoding=guided).infer([conv((Role.USER, "pick"))])
    assert "error" not in answer.metadata
    sent = json.loads(fake.requests[0].json["sampling_params"]["json_schema"])
    assert sent == _Pick.model_json_schema()
    assert answer.last_message.text == '{"n": 1}'


def test_choice_regex_escapes() -> None:
    assert choice_regex(["a.b", "c|d"]) == r"(a\.b|c\|d)"


def test_wrong_key_is_a_clear_error(fake: FakeSGLang, tokenizer: Any) -> None:
    [answer] = engine(fake, tokenizer, key="nope").infer([conv((Role.USER, "hi"))])
    error = answer.metadata["error"]
    assert error["status"] == 401 and error["kind"] == "authentication"
    assert "Unauthorized" in error["message"] and "remote_params.api_key" in error["message"]


def test_a_rejected_row_fails_alone_with_the_servers_message(fake: FakeSGLang, tokenizer: Any) -> None:
    rows = [conv((Role.USER, "first")), conv((Role.USER, "second"))]
    eng = engine(fake, tokenizer, guided_decoding=GuidedDecodingParams(regex="(unclosed"))
    answers = eng.infer(rows)
    for answer in answers:
        assert answer.metadata["error"]["status"] == 400
        assert "Invalid regex" in answer.metadata["error"]["message"]
    fake.clear()
    fake.fail_next(400, "Input length exceeds the maximum context length.")
    answers = engine(fake, tokenizer).infer(rows)
    failed = [a for a in answers if "error" in a.metadata]
    assert len(failed) == 1 and "maximum context length" in failed[0].metadata["error"]["message"]


def test_v1_base_url_points_at_the_native_api(tokenizer: Any) -> None:
    eng = SGLangInferenceEngine(
        ModelParams(model_name="m"), remote_params=RemoteParams(api_url="http://h:30000/v1"), tokenizer=tokenizer
    )
    assert eng.url == "http://h:30000/generate"


def test_missing_tokenizer_is_a_clear_error(tmp_path: Any) -> None:
    with pytest.raises(ModelNotFoundError, match="tokenizer"):
        SGLangInferenceEngine(
            ModelParams(model_name=str(tmp_path / "nothing")), remote_params=RemoteParams(api_url="http://h:1")
        )


def test_streaming_turns_cumulative_text_into_deltas(fake: FakeSGLang, tokenizer: Any) -> None:
    import asyncio

    conversation = conv((Role.SYSTEM, "Be terse."), (Role.USER, "stream please"))
    eng = engine(fake, tokenizer, max_new_tokens=64)
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
    assert fake.requests[-1].json["stream"] is True
    assert len(deltas) > 3 and "".join(deltas) == whole.last_message.text == final.last_message.text
    assert final.metadata["finish_reason"] == "stop" and final.metadata["usage"] == whole.metadata["usage"]


@pytest.mark.parametrize("name", ["llama3-instruct", "chat_ml"])
def test_a_builtin_chat_template_name_renders_the_prompt(fake: FakeSGLang, tokenizer: Any, name: str) -> None:
    from infermux.templates import render_chat_template

    eng = SGLangInferenceEngine(
        ModelParams(model_name=DEFAULT_MODEL_ALIAS, chat_template=name),
        remote_params=RemoteParams(api_url=fake.url, api_key=KEY, max_retries=1, retry_backoff_base=0.01),
        tokenizer=tokenizer,
    )
    conversation = conv((Role.USER, "Hi."), (Role.ASSISTANT, "Hey."), (Role.USER, "2+2?"))
    [answer] = eng.infer([conversation])
    messages = [{"role": m.role.value, "content": m.text} for m in conversation.messages]
    expected = render_chat_template(name, messages, bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token)
    assert fake.requests[-1].json["text"] == expected  # the template, never the name, is what is sent
    assert name not in expected
    assert answer.last_message.text == "system=- | turns=3 | images=0 | last=2+2?"  # the fake read the turns back
    # The tokenizer passed in is not changed: an engine without the setting renders with the model's own.
    assert tokenizer.chat_template and "<|start_header_id|>" not in tokenizer.chat_template


@pytest.mark.parametrize("stream", [False, True])
def test_a_reply_without_token_counts_has_no_usage(tokenizer: Any, stream: bool) -> None:
    """Absent usage stays absent (never zeros, which would price the row as free); the finish reason
    in ``meta_info`` is still read."""
    with FakeSGLang(report_usage=False) as server:
        eng = SGLangInferenceEngine(
            ModelParams(model_name=DEFAULT_MODEL_ALIAS),
            generation_params=GenerationParams(max_new_tokens=2),
            remote_params=RemoteParams(api_url=server.url, max_retries=0),
            tokenizer=tokenizer,
        )
        if stream:

            async def final() -> Conversation:
                async for event in eng.stream(conv((Role.USER, "hello there you"))):
                    if event.final:
                        assert event.conversation is not None
                        return event.conversation
                raise AssertionError("no final event")

            import asyncio

            answer = asyncio.run(final())
        else:
            [answer] = eng.infer([conv((Role.USER, "hello there you"))])
    assert answer.last_message.text
    assert "usage" not in answer.metadata and answer.usage is None
    assert answer.metadata["finish_reason"] == "length"


def test_chat_template_auto_is_the_tokenizers_own(fake: FakeSGLang, tokenizer: Any) -> None:
    def prompt(template: str | None) -> str:
        eng = SGLangInferenceEngine(
            ModelParams(model_name=DEFAULT_MODEL_ALIAS, chat_template=template),
            remote_params=RemoteParams(api_url=fake.url, api_key=KEY, max_retries=0),
            tokenizer=tokenizer,
        )
        return eng.render_prompt(conv((Role.USER, "Hi.")))[0]

    assert prompt("auto") == prompt(None)
    assert prompt("gpt2") == "Hi." + str(tokenizer.eos_token)
