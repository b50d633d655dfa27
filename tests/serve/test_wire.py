"""Requests in, checked against an engine's capabilities; completion objects and chunks out."""

from __future__ import annotations

from typing import Any

import pytest

from infermux.configs.generation_params import GenerationParams
from infermux.engines.capabilities import Capabilities
from infermux.serve import answers, wire
from infermux.serve.metrics import Histogram, Metrics
from infermux.serve.wire import ApiError
from infermux.types import Role, Type

FULL = Capabilities(
    generation_params=frozenset({"temperature", "top_p", "seed", "stop_strings", "logit_bias", "min_p"}),
    guided_decoding=frozenset({"json"}),
    images=True,
)
BARE = Capabilities()
DEFAULTS = GenerationParams(max_new_tokens=100)


def prep(body: dict[str, Any], caps: Capabilities = FULL) -> wire.Prepared:
    full = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}
    return wire.prepare(full, served_model="m", defaults=DEFAULTS, caps=caps, engine_name="E")


def error(body: dict[str, Any], caps: Capabilities = FULL) -> ApiError:
    with pytest.raises(ApiError) as caught:
        prep(body, caps)
    return caught.value


def test_parameters_map_onto_generation_params() -> None:
    p = prep(
        {
            "max_completion_tokens": 7,
            "temperature": 0.7,
            "top_p": 0.9,
            "seed": 3,
            "stop": "END",
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array"}}},
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    g = p.generation
    assert (g.max_new_tokens, g.temperature, g.top_p, g.seed, g.stop_strings) == (7, 0.7, 0.9, 3, ["END"])
    assert g.guided_decoding is not None and g.guided_decoding.schema_dict() == {"type": "array"}
    assert p.stream and p.include_usage


def test_defaults_come_from_the_server_config() -> None:
    p = prep({})
    assert p.generation.max_new_tokens == 100 and p.generation.temperature == 0.0
    assert not p.stream and not p.include_usage


def test_messages_roles_and_images() -> None:
    p = prep(
        {
            "messages": [
                {"role": "developer", "content": "be kind"},
                {"role": "user", "content": [{"type": "text", "text": "look"},
                                             {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "and?"},
            ]
        }
    )  # fmt: skip
    roles = [m.role for m in p.conversation.messages]
    assert roles == [Role.SYSTEM, Role.USER, Role.ASSISTANT, Role.USER]
    item = p.conversation.messages[1].content[1]  # type: ignore[index]
    assert item.type == Type.IMAGE_BINARY and item.binary.startswith(b"\x89PNG")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("body", "param", "status"),
    [
        ({"max_tokens": -1}, "max_tokens", 400),
        ({"max_tokens": 0}, "max_tokens", 400),
        ({"temperature": 3}, "temperature", 400),
        ({"colour": "red"}, "colour", 400),
        ({"model": "other"}, "model", 404),
        ({"n": 3}, "n", 400),
        ({"n": 0}, "n", 400),
        ({"top_logprobs": 2}, "top_logprobs", 400),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", 400),
        ({"stream": "maybe"}, "stream", 400),
        ({"stop": 5}, "stop", 400),
        ({"tool_choice": 5}, "tool_choice", 400),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages.0.content.0.text", 400),
        ({"messages": []}, "messages", 400),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", 400),
        ({"stream_options": {"include_usage": True}}, "stream_options", 400),
        ({"messages": [{"role": "user", "content": "x", "bogus": 1}]}, "messages.0.bogus", 400),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]},
         "messages.0.content.0.image_url.url", 400),
    ],
)  # fmt: skip
def test_bad_values_name_their_parameter(body: dict[str, Any], param: str, status: int) -> None:
    err = error(body)
    assert (err.param, err.status) == (param, status)
    assert set(err.body()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": 0.5}, "temperature"),
        ({"seed": 1}, "seed"),
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"logprobs": True, "top_logprobs": 3}, "logprobs"),
        ({"stop": ["x"]}, "stop"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]},
         "messages"),
    ],
)  # fmt: skip
def test_parameters_the_engine_cannot_honour_are_400s(body: dict[str, Any], param: str) -> None:
    err = error(body, BARE)
    assert err.param == param and err.code == "unsupported_parameter"
    assert "E " in err.message or "E does" in err.message or "E cannot" in err.message


def test_response_objects() -> None:
    meta = {"usage": {"prompt_tokens": 3, "completion_tokens": 2}, "finish_reason": "length"}
    done = answers.completion("id1", "m", 1, "hi", meta)
    assert done["choices"][0]["message"]["content"] == "hi" and done["choices"][0]["finish_reason"] == "length"
    assert done["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert answers.chunk("id1", "m", 1, None, usage=done["usage"], include_usage=True)["choices"] == []
    assert "usage" not in answers.chunk("id1", "m", 1, {"content": "x"})
    assert [answers.finish_reason_of({"finish_reason": r}) for r in ("length", "unknown", "error", None)] == [
        "length", "stop", "stop", "stop"
    ]  # fmt: skip


def test_metrics_render_histograms_cumulatively() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.5, 5.0):
        h.observe(v)
    assert h.lines("x") == ['x_bucket{le="0.1"} 1', 'x_bucket{le="1.0"} 2', 'x_bucket{le="+Inf"} 3',
                            "x_sum 5.550000", "x_count 3"]  # fmt: skip
    m = Metrics('we"ird', "E")
    m.errors["400"] += 2
    text = m.render()
    assert 'infermux_info{model="we\\"ird",engine="E"} 1' in text
    assert 'infermux_errors_total{status="400"} 2' in text and text.endswith("\n")


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
TOOLS = Capabilities(tools=True)


def test_tools_and_tool_history_become_a_conversation() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    p = prep(
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
            ],
            "tools": [TOOL],
            "tool_choice": "required",
            "parallel_tool_calls": False,
        },
        TOOLS,
    )
    assert p.conversation.tools is not None and p.conversation.tools[0].function.name == "f"
    assistant, tool = p.conversation.messages[1], p.conversation.messages[2]
    assert assistant.content is None and assistant.tool_calls is not None and assistant.tool_calls[0].id == "c1"
    assert tool.role == Role.TOOL and tool.tool_call_id == "c1"
    assert p.generation.tool_choice == "required" and p.generation.parallel_tool_calls is False


@pytest.mark.parametrize("body", [{"tools": [TOOL]}, {"tools": [TOOL], "tool_choice": "required"}])
def test_tools_on_an_engine_without_them_are_a_400(body: dict[str, Any]) -> None:
    err = error(body, FULL)
    assert err.status == 400 and err.code == "unsupported_parameter" and "tool" in err.message


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "no tools are offered"),
        ({"tool_choice": "required"}, "no tools are offered"),
        ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "g"}}}, "'g', which is not among"),
    ],
)
def test_a_tool_choice_that_does_not_fit_the_tools_is_a_400_naming_it(body: dict[str, Any], says: str) -> None:
    err = error(body, TOOLS)
    assert (err.status, err.param, err.code) == (400, "tool_choice", "invalid_value")
    assert says in err.message and err.body()["error"]["param"] == "tool_choice"
    assert prep({"tool_choice": "auto"}, TOOLS).generation.tool_choice == "auto"  # auto and none need no tools
    assert prep({"tool_choice": "none"}, TOOLS).generation.tool_choice == "none"


@pytest.mark.parametrize("seed", [2**63, -(2**63) - 1, 2**64, 10**30])
def test_a_seed_outside_the_signed_64_bit_range_is_a_400_naming_it(seed: int) -> None:
    err = error({"seed": seed})
    assert (err.status, err.param, err.code) == (400, "seed", "invalid_value")
    assert prep({"seed": -(2**63)}).generation.seed == -(2**63) and prep({"seed": 2**63 - 1}).generation.seed


def test_answer_tool_calls_go_out_in_openai_shape() -> None:
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    body = answers.completion("id", "m", 0, "", {"finish_reason": "tool_calls"}, calls)
    message = body["choices"][0]["message"]
    assert message["content"] is None and message["tool_calls"] == calls
    assert body["choices"][0]["finish_reason"] == "tool_calls"


SAMPLES = Capabilities(generation_params=frozenset({"temperature", "seed", "n", "logprobs", "top_logprobs"}))


def test_n_and_logprobs_map_onto_generation_params() -> None:
    p = prep({"n": 3, "temperature": 0.8, "seed": 5, "logprobs": True, "top_logprobs": 4}, SAMPLES)
    g = p.generation
    assert (g.n, g.logprobs, g.top_logprobs, g.seed) == (3, True, 4, 5) and p.samples
    assert prep({"logprobs": True}, SAMPLES).generation.top_logprobs == 0
    plain = prep({"n": 1, "logprobs": False}, SAMPLES)
    assert not plain.samples and plain.generation.n == 1 and not plain.generation.logprobs


def test_samples_answer_as_openai_choices_with_logprobs() -> None:
    token = {
        "token": "é",
        "logprob": -0.5,
        "top_logprobs": [{"token": "é", "logprob": -0.5}, {"token": "a", "logprob": -2.0}],
    }
    samples = [
        {"text": "é", "finish_reason": "stop", "usage": None, "tool_calls": None, "logprobs": [token]},
        {"text": "bb", "finish_reason": "length", "usage": None, "tool_calls": None, "logprobs": []},
    ]
    meta = {"usage": {"prompt_tokens": 3, "completion_tokens": 4}, "finish_reason": "stop", "samples": samples}
    body = answers.completion("id", "m", 0, "é", meta)
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert [c["message"]["content"] for c in body["choices"]] == ["é", "bb"]
    assert [c["finish_reason"] for c in body["choices"]] == ["stop", "length"]
    (entry,) = body["choices"][0]["logprobs"]["content"]
    assert entry == {
        "token": "é",
        "logprob": -0.5,
        "bytes": [195, 169],
        "top_logprobs": [
            {"token": "é", "logprob": -0.5, "bytes": [195, 169]},
            {"token": "a", "logprob": -2.0, "bytes": [97]},
        ],
    }
    assert body["choices"][1]["logprobs"] == {"content": [], "refusal": None}
    assert body["usage"]["total_tokens"] == 7
    piece = answers.chunk("id", "m", 0, {"content": "bb"}, index=1, logprobs={"content": [], "refusal": None})
    assert piece["choices"][0]["index"] == 1 and piece["choices"][0]["logprobs"] == {"content": [], "refusal": None}


def test_logprobs_bytes_are_the_stored_ones_else_the_texts_unless_lossy() -> None:
    partial = {"token": "\ufffd", "logprob": -0.1, "bytes": [230]}
    tokens = [
        {**partial, "top_logprobs": [partial]},
        {"token": "\ufffd", "logprob": -0.2},  # an older row: no bytes, and the text is lossy
        {"token": "ok", "logprob": -0.3},
    ]
    content = answers.logprobs_of(tokens)["content"]  # type: ignore[index]
    assert [t["bytes"] for t in content] == [[230], None, [111, 107]]
    assert content[0]["top_logprobs"][0]["bytes"] == [230]


def test_unknown_usage_is_null_not_zero() -> None:
    """An upstream that reported no usage (issue 23, item 11): the client sees null, never a free answer."""
    assert answers.usage_of({}) is None
    assert answers.usage_of({"usage": {"completion_tokens": 2}}) is None
    body = answers.completion("id1", "m", 1, "hi", {"finish_reason": "stop"})
    assert body["usage"] is None
    assert answers.usage_of({"usage": {"prompt_tokens": 3, "completion_tokens": 2}}) == {
        "prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5,
    }  # fmt: skip


def test_requests_are_checked_by_the_engines_own_check_against_the_servers_settings() -> None:
    import functools

    from infermux.configs import ModelParams
    from infermux.engines.base import InferenceEngine
    from infermux.errors import ConfigError, UnsupportedParamError

    class Picky(InferenceEngine):
        engine_type = "PICKY"
        capabilities = Capabilities(generation_params=frozenset({"seed"}))

        def _check(self, generation: GenerationParams, *, tools: bool = False) -> None:
            super()._check(generation, tools=tools)
            if generation.seed == 13:  # what only the engine knows (a grammar that cannot compile, ...)
                raise ConfigError("seed 13 is unlucky")

    server = GenerationParams(max_new_tokens=100, min_p=0.1)  # the server's own setting: warned, not refused
    engine = Picky(ModelParams(model_name="m"), generation_params=server)
    check = functools.partial(engine.check, baseline=server)
    full = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

    def prepare(body: dict[str, Any]) -> wire.Prepared:
        return wire.prepare({**full, **body}, served_model="m", defaults=server, caps=engine.capabilities,
                            engine_name=engine.label, check=check)  # fmt: skip

    assert prepare({"seed": 1}).generation.min_p == 0.1
    with pytest.raises(ApiError) as caught:
        prepare({"temperature": 0.5})
    assert (caught.value.param, caught.value.code) == ("temperature", "unsupported_parameter")
    assert caught.value.message == "PICKY does not support 'temperature'."
    with pytest.raises(ConfigError, match="unlucky"):
        prepare({"seed": 13})
    with pytest.raises(UnsupportedParamError) as refused:
        engine.check(server.model_copy(update={"temperature": 0.5, "presence_penalty": 1.0}), baseline=server)
    assert refused.value.params == ("temperature", "presence_penalty")
