"""Request and reply mapping of the OpenAI chat-completions format."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from pydantic import BaseModel

from infermux.configs.generation_params import GenerationParams, GuidedDecodingParams
from infermux.engines.remote.openai.engine import OPENAI_PARAMS
from infermux.engines.remote.openai.format import (
    chat_completions_url,
    choice_logprobs,
    encode_message,
    encode_messages,
    generation_fields,
    image_data_url,
    json_response_format,
    parse_chat_completion,
    reply,
    tool_fields,
)
from infermux.types import ContentItem, Conversation, Message, Role, Type

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1/chat/completions"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000/v1/chat/completions"),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1/chat/completions"),
        ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000/v1/chat/completions"),
        ("https://api.x.ai/v1/chat/completions", "https://api.x.ai/v1/chat/completions"),
        (
            "https://h/openai/deployments/d?api-version=2024-10-21",
            "https://h/openai/deployments/d/chat/completions?api-version=2024-10-21",
        ),
    ],
)
def test_api_url_accepts_base_urls_and_full_endpoints(given: str, expected: str) -> None:
    assert chat_completions_url(given) == expected


def test_api_url_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="absolute"):
        chat_completions_url("localhost:8000")


def test_text_only_messages_are_plain_strings_and_tool_role_passes_through() -> None:
    parts = Message(
        role=Role.USER, content=[ContentItem(type=Type.TEXT, content="a"), ContentItem(type=Type.TEXT, content="b")]
    )
    assert encode_message(parts) == {"role": "user", "content": "a\nb"}
    assert encode_message(Message(role=Role.TOOL, content="42")) == {"role": "tool", "content": "42"}


def test_images_become_image_url_parts_with_data_urls(tmp_path: Path) -> None:
    path = tmp_path / "pic.png"
    path.write_bytes(PNG)
    message = Message(
        role=Role.USER,
        content=[
            ContentItem(type=Type.IMAGE_PATH, content=str(path)),
            ContentItem(type=Type.IMAGE_BINARY, binary=b"\xff\xd8\xff\xe0" + b"\x00" * 8),
            ContentItem(type=Type.IMAGE_URL, content="https://example.com/cat.jpg"),
            ContentItem(type=Type.TEXT, content="describe"),
        ],
    )
    content = encode_message(message)["content"]
    assert [p["type"] for p in content] == ["image_url", "image_url", "image_url", "text"]
    first = content[0]["image_url"]["url"]
    assert first.startswith("data:image/png;base64,") and base64.b64decode(first.split(",", 1)[1]) == PNG
    assert content[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert content[2]["image_url"]["url"] == "https://example.com/cat.jpg"
    assert content[3] == {"type": "text", "text": "describe"}


def test_a_missing_image_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    with pytest.raises(ValueError, match=r"nope\.png"):
        image_data_url(ContentItem(type=Type.IMAGE_PATH, content=str(missing)))


def test_generation_fields_map_names_and_skip_neutral_values() -> None:
    g = GenerationParams(
        max_new_tokens=7, temperature=0.5, top_p=0.9, stop_strings=["\n"], seed=3, logit_bias={"11": -5}
    )
    assert generation_fields(g, OPENAI_PARAMS) == {
        "max_tokens": 7,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["\n"],
        "seed": 3,
        "logit_bias": {"11": -5.0},
    }
    assert generation_fields(GenerationParams(), OPENAI_PARAMS) == {"max_tokens": 256, "temperature": 0.0}
    vllm_only = GenerationParams(min_p=0.1, stop_token_ids=[2])
    assert "min_p" not in generation_fields(vllm_only, OPENAI_PARAMS)
    fields = generation_fields(
        vllm_only, OPENAI_PARAMS | {"min_p", "stop_token_ids"}, max_tokens_field="max_completion_tokens"
    )
    assert fields["min_p"] == 0.1 and fields["stop_token_ids"] == [2] and "max_completion_tokens" in fields


class Person(BaseModel):
    name: str
    age: int


@pytest.mark.parametrize("schema", [Person, Person.model_json_schema(), '{"title": "Person", "type": "object"}'])
def test_guided_json_becomes_a_json_schema_response_format(schema: object) -> None:
    g = GenerationParams(guided_decoding=GuidedDecodingParams(json=schema))
    fmt = generation_fields(g, OPENAI_PARAMS)["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "Person" and fmt["json_schema"]["schema"]["type"] == "object"


def test_reply_metadata_keeps_usage_finish_reason_model_and_reasoning() -> None:
    data = {
        "model": "deepseek-reasoner",
        "choices": [
            {
                "index": 0,
                "finish_reason": "length",
                "message": {"role": "assistant", "content": "4", "reasoning_content": "2+2"},
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7, "extra": {"x": 1}},
    }
    text, meta, calls, reasoning = parse_chat_completion(data)
    assert text == "4" and calls is None
    assert reasoning == "2+2"  # on the answer message, not in metadata
    assert meta == {
        "finish_reason": "length",
        "model": "deepseek-reasoner",
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }
    *_, reasoning = parse_chat_completion({"choices": [{"message": {"content": None, "reasoning": "hm"}}]})
    assert reasoning == "hm"


@pytest.mark.parametrize("bad", [[], {"choices": []}, {"choices": [{}]}, {"choices": [{"message": {"content": 3}}]}])
def test_malformed_replies_raise(bad: object) -> None:
    with pytest.raises((TypeError, KeyError, IndexError, ValueError)):
        parse_chat_completion(bad)


def test_a_complete_reply_with_no_choices_is_a_content_filter_block() -> None:
    text, meta, *_ = parse_chat_completion({"id": "c1", "object": "chat.completion", "model": "m", "choices": []})
    assert text == "" and meta["finish_reason"] == "content_filter"
    filtered = [{"prompt_index": 0, "content_filter_results": {"violence": {"filtered": True, "severity": "high"}}}]
    _, meta, *_ = parse_chat_completion({"choices": [], "prompt_filter_results": filtered})
    assert meta["finish_reason"] == "content_filter" and meta["prompt_filter_results"] == filtered


def test_a_pydantic_instance_as_guided_json_is_its_classs_schema_on_every_protocol() -> None:
    from infermux.engines.remote.anthropic.engine import AnthropicInferenceEngine
    from infermux.engines.remote.gemini.engine import generation_config
    from infermux.engines.remote.openai.format import json_response_format

    class City(BaseModel):
        name: str

    by_class, by_instance = GuidedDecodingParams(json=City), GuidedDecodingParams(json=City(name="Paris"))
    assert json_response_format(by_instance) == json_response_format(by_class)
    gen = GenerationParams
    assert generation_config(gen(guided_decoding=by_instance)) == generation_config(gen(guided_decoding=by_class))
    from infermux.configs import ModelParams, RemoteParams
    from infermux.types import Conversation

    anthropic = AnthropicInferenceEngine(ModelParams(model_name="c"), remote_params=RemoteParams(api_url="http://h"))
    conversation = Conversation.model_validate({"messages": [{"role": "user", "content": "x"}]})
    bodies = [anthropic.build_body(conversation, gen(guided_decoding=g)) for g in (by_class, by_instance)]
    assert bodies[0] == bodies[1] and "output_config" in bodies[0]
    llama_cpp = pytest.importorskip("llama_cpp", reason="LLAMACPP grammar needs llama-cpp-python")
    assert llama_cpp is not None
    from infermux.engines.llamacpp.grammar import grammar_for

    assert grammar_for(by_instance) == grammar_for(by_class)


# ---------------------------------------------------------------------- tool calling

_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def _tool_history(with_ids: bool = True) -> Conversation:
    # Calls always carry an id (required since issue 24, as in Oumi); tool turns may leave theirs out.
    calls = [
        {"function": {"name": "get_weather", "arguments": {"city": c}}, "id": f"id_{c}"} for c in ("Paris", "Rome")
    ]
    tool_turns = [
        {"role": "tool", "content": t, **({"tool_call_id": f"id_{c}"} if with_ids else {})}
        for c, t in (("Paris", "18 C"), ("Rome", "25 C"))
    ]
    return Conversation.model_validate(
        {
            "tools": _TOOLS,
            "messages": [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None, "tool_calls": calls, "reasoning_content": "call it"},
                *tool_turns,
            ],
        }
    )


def test_history_with_calls_and_tool_results_is_encoded_as_openai_names_it() -> None:
    encoded = encode_messages(_tool_history().messages)
    assert encoded[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "id_Paris",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {"id": "id_Rome", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
        ],
    }  # reasoning is not sent back
    assert encoded[2] == {"role": "tool", "content": "18 C", "tool_call_id": "id_Paris"}
    assert encoded[3] == {"role": "tool", "content": "25 C", "tool_call_id": "id_Rome"}


def test_results_without_ids_are_paired_in_order() -> None:
    # Issue 24: a call without an id is refused on load (as Oumi's ToolCall); tool turns without a
    # tool_call_id still answer the calls in order.
    encoded = encode_messages(_tool_history(with_ids=False).messages)
    ids = [c["id"] for c in encoded[1]["tool_calls"]]
    assert ids == ["id_Paris", "id_Rome"]
    assert [encoded[2]["tool_call_id"], encoded[3]["tool_call_id"]] == ids


def test_tool_fields_only_with_tools_and_parallel_sent_only_when_false() -> None:
    conv = _tool_history()
    assert tool_fields(conv, GenerationParams()) == {"tools": _TOOLS}
    named = {"type": "function", "function": {"name": "get_weather"}}
    fields = tool_fields(conv, GenerationParams(tool_choice=named, parallel_tool_calls=False))
    assert fields == {"tools": _TOOLS, "tool_choice": named, "parallel_tool_calls": False}
    plain = Conversation.model_validate({"messages": [{"role": "user", "content": "hi"}]})
    assert tool_fields(plain, GenerationParams(tool_choice="required")) == {}


def test_reply_with_tool_calls_goes_on_the_answer_and_finish_reason_says_so() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
    data = {
        "model": "m",
        "choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [call]}, "finish_reason": "stop"}],
    }
    answered = reply(_tool_history(), data)
    answer = answered.last_message
    assert answer.content is None and answer.tool_calls[0].to_json_dict() == call
    assert answered.metadata["finish_reason"] == "tool_calls" and "tool_calls" not in answered.metadata
    assert answered.tools == _tool_history().tools
    assert Conversation.from_json(answered.to_json()) == answered  # valid input for the next turn


def test_strict_json_schema_is_sent_when_set() -> None:
    guided = GuidedDecodingParams(json={"type": "object"}, strict=True)
    assert json_response_format(guided)["json_schema"]["strict"] is True
    assert "strict" not in json_response_format(GuidedDecodingParams(json={"type": "object"}))["json_schema"]


def test_usage_keeps_cached_tokens_computes_total_and_is_absent_when_not_sent() -> None:
    answer = {"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}]}
    _, meta, _, _ = parse_chat_completion(answer)
    assert "usage" not in meta
    usage = {"prompt_tokens": 10, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 8}}
    _, meta, _, _ = parse_chat_completion({**answer, "usage": usage})
    assert meta["usage"] == {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12, "cached_tokens": 8}


def test_logprobs_keep_the_servers_bytes_of_partial_tokens() -> None:
    # Two tokens that together are "é" (0xC3 0xA9): the server sends each token's own bytes, or null.
    choice = {"logprobs": {"content": [
        {"token": "bytes:\\xc3", "logprob": -0.1, "bytes": [195],
         "top_logprobs": [{"token": "bytes:\\xc3", "logprob": -0.1, "bytes": [195]}, {"token": "e", "logprob": -3.0}]},
        {"token": "bytes:\\xa9", "logprob": -0.2, "bytes": [169], "top_logprobs": []},
        {"token": "<x>", "logprob": -0.3, "bytes": None, "top_logprobs": []},
    ]}}  # fmt: skip
    tokens = choice_logprobs(choice)
    assert tokens is not None
    assert [t.bytes for t in tokens] == [[195], [169], None] and bytes([195, 169]).decode() == "é"
    assert [t.token for t in tokens] == ["bytes:\\xc3", "bytes:\\xa9", "<x>"]
    assert [a.bytes for a in tokens[0].top_logprobs] == [[195], None]


def test_a_call_the_server_sent_without_an_id_gets_one() -> None:
    # Issue 24: a tool call needs an id (as in Oumi); an answer must stay valid input for the next turn.
    data = {"model": "m", "choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}, "finish_reason": "tool_calls"}]}  # fmt: skip
    answered = reply(_tool_history(), data)
    call_id = answered.last_message.tool_calls[0].id
    assert call_id.startswith("call_") and len(call_id) > len("call_")
    assert Conversation.from_json(answered.to_json()) == answered
