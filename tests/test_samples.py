"""infermux.samples: the one shape every engine writes for n answers and log-probabilities."""

from __future__ import annotations

import json
import math

from infermux.configs import GenerationParams
from infermux.samples import merge_replies, read_samples, reply_with_samples, sum_usage, token_logprob
from infermux.types import Conversation, FinishReason, Sample, Usage

QUESTION = Conversation.model_validate({"messages": [{"role": "user", "content": "hi"}], "metadata": {"k": 1}})


def test_first_sample_is_the_answer_and_all_are_in_metadata() -> None:
    samples = [
        Sample(text="a", finish_reason=FinishReason.STOP, usage=Usage.of(completion=2),
               logprobs=[token_logprob("a", -0.5, [("a", -0.5), ("b", -1.0)])]),
        Sample(text="bb", finish_reason=FinishReason.LENGTH, usage=Usage.of(completion=3), logprobs=[]),
    ]  # fmt: skip
    row = reply_with_samples(QUESTION, samples, {"model": "m"}, usage=Usage.of(5, 5))
    assert row.last_message.text == "a" and row.metadata["finish_reason"] == "stop"
    assert row.metadata["usage"] == {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}
    assert row.metadata["k"] == 1 and row.metadata["model"] == "m"
    stored = json.loads(json.dumps(row.to_json_dict()))["metadata"]["samples"]
    assert stored[0] == {
        "text": "a", "finish_reason": "stop", "usage": {"completion_tokens": 2}, "tool_calls": None,
        "logprobs": [{"token": "a", "logprob": -0.5,
                      "top_logprobs": [{"token": "a", "logprob": -0.5}, {"token": "b", "logprob": -1.0}]}],
    }  # fmt: skip
    assert stored[1]["finish_reason"] == "length" and stored[1]["logprobs"] == []
    again = Conversation.from_json_dict(json.loads(json.dumps(row.to_json_dict())))
    assert read_samples(again) == samples


def test_plain_single_answer_has_no_samples_unless_asked() -> None:
    plain = reply_with_samples(QUESTION, [Sample(text="x", finish_reason=FinishReason.STOP)])
    assert "samples" not in plain.metadata and plain.last_message.text == "x"
    [read] = read_samples(plain)
    assert read.text == "x" and read.finish_reason == FinishReason.STOP and read.logprobs is None
    asked = reply_with_samples(QUESTION, [Sample(text="x")], generation=GenerationParams(n=1, logprobs=True))
    assert len(asked.metadata["samples"]) == 1


def test_usage_sum_recomputes_the_total_and_infinite_logprobs_are_finite() -> None:
    total = sum_usage([Usage.of(10, 0), Usage.of(completion=3), Usage.of(completion=4), None])
    assert total is not None and total.to_json_dict() == {"prompt_tokens": 10, "completion_tokens": 7,
                                                          "total_tokens": 17}  # fmt: skip
    assert sum_usage([None]) is None
    entry = token_logprob("x", -math.inf, [("y", -math.inf)])
    assert entry.logprob == -9999.0 and entry.top_logprobs[0].logprob == -9999.0
    json.dumps(entry.model_dump(), allow_nan=False)


def test_merge_replies_of_separate_requests() -> None:
    answers = [
        QUESTION.with_reply(f"r{i}", {"model": "m"}, usage=Usage.of(4, i + 1), finish_reason="end_turn")
        for i in range(3)
    ]
    row = merge_replies(QUESTION, answers)
    assert [s.text for s in read_samples(row)] == ["r0", "r1", "r2"]
    assert row.metadata["usage"] == {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18}
    assert row.metadata["finish_reason"] == "stop" and row.metadata["model"] == "m" and row.metadata["k"] == 1


def test_token_bytes_are_kept_and_rows_without_them_still_load() -> None:
    entry = token_logprob(b"\xe6", -0.1, [(b"\xe6", -0.1), ("text only", -2.0), (("\u6674", b"\xb4"), -3.0)])
    assert (entry.token, entry.bytes) == ("\ufffd", [0xE6])
    assert [(a.token, a.bytes) for a in entry.top_logprobs] == [("\ufffd", [0xE6]), ("text only", None),
                                                                ("\u6674", [0xB4])]  # fmt: skip
    row = reply_with_samples(QUESTION, [Sample(text="x", logprobs=[entry])])
    stored = json.loads(row.to_json())["metadata"]["samples"][0]["logprobs"][0]
    assert stored["bytes"] == [0xE6] and "bytes" not in stored["top_logprobs"][1]  # unknown: left out
    old = {
        "text": "a",
        "logprobs": [{"token": "a", "logprob": -0.5, "top_logprobs": [{"token": "a", "logprob": -0.5}]}],
    }
    (token,) = Sample.model_validate(old).logprobs or []
    assert token.bytes is None and token.top_logprobs[0].bytes is None
    assert Sample.model_validate(old).to_json_dict()["logprobs"] == old["logprobs"]  # unchanged when rewritten
