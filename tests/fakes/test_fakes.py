"""The fakes themselves: they reject what the real APIs reject, and the official SDKs (where installed)
accept what they answer, so a test that passes against a fake says something about the real service."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.fakes import FakeAnthropic, FakeGemini, FakeOpenAIBatch, FakeOpenAIChat, FakeSGLang, FakeVertex, tiny_png


def post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


GEMINI_OK = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"contents": [{"role": "assistant", "parts": [{"text": "hi"}]}]}, "valid role"),
        ({**GEMINI_OK, "generationConfig": {"max_tokens": 5}}, 'Unknown name "max_tokens"'),
        ({**GEMINI_OK, "generationConfig": {"responseSchema": {"type": "OBJECT"}}}, "response_mime_type"),
        (
            {
                **GEMINI_OK,
                "generationConfig": {"responseMimeType": "application/json", "responseSchema": {"$ref": "#/$defs/X"}},
            },
            'Unknown name "$ref"',
        ),
        (
            {"contents": [{"parts": [{"text": "a", "inlineData": {"mimeType": "image/png", "data": "x"}}]}]},
            "exactly one",
        ),
    ],
)
def test_gemini_fake_rejects_what_gemini_rejects(body: dict, message: str) -> None:
    with FakeGemini(api_key="k") as fake:
        url = fake.url + "/v1beta/models/gemini-2.0-flash:generateContent"
        status, reply = post(url, body, {"x-goog-api-key": "k"})
        assert status == 400 and reply["error"]["status"] == "INVALID_ARGUMENT"
        assert message in reply["error"]["message"]
        assert post(url, GEMINI_OK, {"x-goog-api-key": "k"})[0] == 200


def test_vertex_fake_checks_token_project_and_parameters() -> None:
    with FakeVertex(valid_tokens={"t"}) as fake:
        url = fake.url + "/v1beta1/projects/test-project/locations/us-central1/endpoints/openapi/chat/completions"
        ok = {"model": "google/gemini-2.0-flash", "messages": [{"role": "user", "content": "hi"}]}
        assert post(url, ok, {"Authorization": "Bearer t"})[0] == 200
        assert post(url, ok, {"Authorization": "Bearer other"})[0] == 401
        assert post(url.replace("test-project", "elsewhere"), ok, {"Authorization": "Bearer t"})[0] == 403
        assert post(url, {**ok, "logit_bias": {"1": 2}}, {"Authorization": "Bearer t"})[0] == 400
        http_image = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}
        assert post(url, {**ok, "messages": [http_image]}, {"Authorization": "Bearer t"})[0] == 400


def test_sglang_fake_wants_a_templated_prompt_and_known_sampling_params() -> None:
    prompt = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    with FakeSGLang() as fake:
        assert post(fake.url + "/generate", {"text": prompt})[0] == 200
        assert post(fake.url + "/generate", {"text": "hi"})[0] == 400
        status, reply = post(fake.url + "/generate", {"text": prompt, "sampling_params": {"max_tokens": 3}})
        assert status == 400 and "max_tokens" in reply["error"]["message"]
        both = {"text": prompt, "sampling_params": {"regex": "a", "json_schema": "{}"}}
        assert post(fake.url + "/generate", both)[0] == 400


def test_anthropic_fake_headers_roles_and_sampling() -> None:
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    ok = {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    with FakeAnthropic(api_key="k") as fake:
        url = fake.url + "/v1/messages"
        assert post(url, ok, headers)[0] == 200
        assert post(url, ok, {"x-api-key": "k"})[0] == 400  # anthropic-version missing
        no_max_tokens = {k: v for k, v in ok.items() if k != "max_tokens"}
        assert post(url, no_max_tokens, headers)[0] == 400
        assert post(url, {**ok, "temperature": 1.5}, headers)[0] == 400
        assert post(url, {**ok, "temperature": 0.5, "top_p": 0.9}, headers)[0] == 400
        image = {"type": "image_url", "image_url": {"url": "https://x/y.png"}}  # OpenAI-style: not Anthropic's
        status, reply = post(url, {**ok, "messages": [{"role": "user", "content": [image]}]}, headers)
        assert status == 400 and reply["type"] == "error" and reply["error"]["type"] == "invalid_request_error"


def test_openai_batch_fake_rejects_bad_batches() -> None:
    with FakeOpenAIBatch(api_key="k") as fake:
        headers = {"Authorization": "Bearer k"}
        status, reply = post(fake.url + "/v1/batches", {"input_file_id": "file-x", "endpoint": "/v1/chat/completions",
                                                        "completion_window": "1h"}, headers)  # fmt: skip
        assert status == 400 and "completion_window" in reply["error"]["message"]
        assert post(fake.url + "/v1/batches", {"input_file_id": "file-x"}, headers)[0] == 400
        assert post(fake.url + "/v1/batches", {"input_file_id": "f", "endpoint": "/v1/chat/completions",
                                                "completion_window": "24h"}, headers)[0] == 404  # fmt: skip


# ------------------------------------------------------------------------------ official SDKs


def test_the_openai_sdk_drives_the_batch_fake() -> None:
    openai = pytest.importorskip("openai")
    with FakeOpenAIBatch(api_key="k") as fake:
        client = openai.OpenAI(api_key="k", base_url=fake.url + "/v1", max_retries=0)
        line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}}  # fmt: skip
        file = client.files.create(file=("in.jsonl", json.dumps(line).encode()), purpose="batch")
        batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
        for _ in range(3):
            batch = client.batches.retrieve(batch.id)
        assert batch.status == "completed" and batch.request_counts.completed == 1
        record = json.loads(client.files.content(batch.output_file_id).text)
        assert record["custom_id"] == "a" and record["response"]["body"]["object"] == "chat.completion"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(api_key="bad", base_url=fake.url + "/v1", max_retries=0).batches.retrieve(batch.id)


def test_the_anthropic_sdk_reads_the_fakes_answers_streams_and_errors() -> None:
    anthropic = pytest.importorskip("anthropic")
    with FakeAnthropic(api_key="k") as fake:
        client = anthropic.Anthropic(api_key="k", base_url=fake.url, max_retries=0)
        png = base64.b64encode(tiny_png()).decode()
        content = [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
                   {"type": "text", "text": "what?"}]  # fmt: skip
        message = client.messages.create(
            model="c", max_tokens=50, system="S", messages=[{"role": "user", "content": content}]
        )
        assert message.content[0].text == "system=S | turns=1 | images=1 | last=what?"
        assert message.stop_reason == "end_turn" and message.usage.input_tokens > 0
        with client.messages.stream(model="c", max_tokens=50, messages=[{"role": "user", "content": "hi"}]) as s:
            streamed = "".join(s.text_stream)
            final = s.get_final_message()
        assert streamed == final.content[0].text and final.stop_reason == "end_turn"
        fake.fail_next(529, "Overloaded")
        with pytest.raises(anthropic.APIStatusError) as info:
            client.messages.create(model="c", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        assert info.value.status_code == 529 and "Overloaded" in str(info.value)
        with pytest.raises(anthropic.AuthenticationError):
            anthropic.Anthropic(api_key="bad", base_url=fake.url, max_retries=0).messages.create(
                model="c", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
            )


@pytest.mark.parametrize("burst", [True, False])
def test_the_openai_sdk_reads_the_chat_fakes_answers_and_streams(burst: bool) -> None:
    openai = pytest.importorskip("openai")
    with FakeOpenAIChat(burst=burst) as fake:
        client = openai.OpenAI(api_key="k", base_url=fake.url + "/v1", max_retries=0)
        messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "hi there"}]
        whole = client.chat.completions.create(model="m", messages=messages)
        assert whole.choices[0].message.content == "system=S | turns=1 | images=0 | last=hi there"
        stream = client.chat.completions.create(
            model="m", messages=messages, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
        assert (
            "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
        )
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
        with pytest.raises(openai.BadRequestError, match="stop: at most 4"):
            client.chat.completions.create(model="m", messages=messages, stop=["a", "b", "c", "d", "e"])
