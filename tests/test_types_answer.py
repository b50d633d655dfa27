"""The typed answer accessors of Conversation (usage, finish_reason, samples, cost_usd, cached): read
from the stored metadata, which stays exactly as written."""

import copy
import json
import pickle

from infermux.types import Conversation, FinishReason, Sample, TokenLogprob, Usage


def _question(metadata: dict | None = None) -> Conversation:
    return Conversation.model_validate({"messages": [{"role": "user", "content": "hi"}], "metadata": metadata})


def test_a_reply_reads_back_what_with_reply_stored() -> None:
    reply = _question({"model": "m"}).with_reply("yo", usage=Usage.of(3, 2), finish_reason="end_turn")
    assert reply.usage == Usage.of(3, 2)
    assert reply.finish_reason is FinishReason.STOP
    assert reply.samples is None and reply.cost_usd is None and reply.cached is False
    # the stored form is unchanged: plain JSON, in the order engines have always written it
    assert reply.metadata == {
        "model": "m",
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        "finish_reason": "stop",
    }


def test_round_trip_through_jsonl_keeps_bytes_and_answer() -> None:
    sample = Sample(text="a", finish_reason=FinishReason.LENGTH, usage=Usage.of(completion=1),
                    logprobs=[TokenLogprob(token="a", logprob=-0.5, bytes=[97])])  # fmt: skip
    metadata = {"samples": [sample.to_json_dict()], "cost_usd": 1.5e-6, "cached": True}
    reply = _question().with_reply("a", metadata, usage=Usage.of(4, 1), finish_reason=FinishReason.LENGTH)
    line = reply.to_json()
    again = Conversation.from_json(line)
    assert again.to_json() == line
    assert again.usage == reply.usage == Usage.of(4, 1)
    assert again.finish_reason is FinishReason.LENGTH
    assert again.samples == [sample]
    assert again.cost_usd == 1.5e-6 and again.cached is True


def test_absent_fields_are_none() -> None:
    row = _question()
    assert (row.usage, row.finish_reason, row.samples, row.cost_usd, row.cached) == (None, None, None, None, False)
    assert row.metadata == {}


def test_rows_written_earlier_still_load() -> None:
    # an older row: usage without a total, a count as a float, an unknown key, an unnormalised reason,
    # "cached" not exactly true, a cost that is not a number
    old = json.dumps({
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        "metadata": {"usage": {"prompt_tokens": 7, "completion_tokens": 2.0, "prompt_tokens_details": {}},
                     "finish_reason": "MAX_TOKENS", "cached": "yes", "cost_usd": "n/a",
                     "samples": [{"text": "a", "finish_reason": None, "usage": None, "tool_calls": None,
                                  "logprobs": [{"token": "a", "logprob": -0.1}]}]},
    })  # fmt: skip
    row = Conversation.from_json(old)
    assert row.usage == Usage.of(7, 2)
    assert row.finish_reason is FinishReason.LENGTH
    assert row.cached is False and row.cost_usd is None
    assert row.samples == [Sample(text="a", logprobs=[TokenLogprob(token="a", logprob=-0.1)])]
    assert json.loads(row.to_json())["metadata"] == json.loads(old)["metadata"]  # left as it was


def test_usage_that_is_not_an_object_is_none() -> None:
    assert _question({"usage": None}).usage is None
    assert _question({"usage": [1, 2]}).usage is None
    assert _question({"usage": {}}).usage == Usage()


def test_a_rewritten_field_is_read_again() -> None:
    row = _question({"usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
    assert row.usage == Usage.of(1, 1)
    row.metadata["usage"] = {"prompt_tokens": 5, "completion_tokens": 0, "total_tokens": 5}  # as a job may
    assert row.usage == Usage.of(5, 0)
    row.metadata["cost_usd"] = 0.25
    assert row.cost_usd == 0.25
    del row.metadata["usage"]
    assert row.usage is None
    row.metadata["finish_reason"] = "length"
    assert row.finish_reason is FinishReason.LENGTH


def test_copies_do_not_share_stale_values() -> None:
    row = _question().with_reply("a", usage=Usage.of(1, 1), finish_reason="stop")
    assert row.usage == Usage.of(1, 1)  # parsed and cached
    changed = row.replace(metadata={**row.metadata, "usage": {"prompt_tokens": 9}, "finish_reason": "length"})
    assert changed.usage == Usage(prompt_tokens=9) and changed.finish_reason is FinishReason.LENGTH
    assert row.usage == Usage.of(1, 1) and row.finish_reason is FinishReason.STOP
    next_turn = row.with_reply("b", usage=Usage.of(2, 2))
    assert next_turn.usage == Usage.of(2, 2) and row.usage == Usage.of(1, 1)
    updated = row.model_copy(update={"metadata": {"usage": {"completion_tokens": 4}}})
    assert updated.usage == Usage(completion_tokens=4) and updated.finish_reason is None


def test_the_cache_is_no_part_of_equality_copies_or_pickles() -> None:
    row = _question().with_reply("a", usage=Usage.of(1, 1))
    fresh = Conversation.from_json(row.to_json())
    assert row.usage is not None  # row has parsed its usage, fresh has not
    assert row == fresh and fresh == row
    assert pickle.loads(pickle.dumps(row)) == row
    assert copy.deepcopy(row) == row and copy.copy(row) == row
    assert pickle.loads(pickle.dumps(row)).usage == Usage.of(1, 1)


def test_a_read_is_parsed_once() -> None:
    row = _question().with_reply("a", {"samples": [Sample(text="a").to_json_dict()]}, usage=Usage.of(1, 1))
    assert row.usage is row.usage
    assert row.samples is row.samples
    assert row.replace(conversation_id="x").usage == row.usage


def test_answer_counts_agree_with_the_typed_fields_and_keep_nothing_on_the_row() -> None:
    stored_forms = [
        None,
        {"usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}, "finish_reason": "length"},
        {"usage": {"prompt_tokens": "7", "completion_tokens": None}, "finish_reason": "MAX_TOKENS"},
        {"usage": {"prompt_tokens": True, "completion_tokens": 4}, "finish_reason": "stop"},
        {"usage": {"completion_tokens": 9}, "finish_reason": {"type": "length"}},
        {"usage": "n/a", "finish_reason": None},
    ]
    for metadata in stored_forms:
        row = _question(metadata)
        counts = row.answer_counts()
        assert not hasattr(row, "_answers")  # read without keeping parsed fields on the row
        usage = row.usage
        expected = (
            (usage.prompt_tokens or 0) if usage else 0,
            (usage.completion_tokens or 0) if usage else 0,
            row.finish_reason is FinishReason.LENGTH,
        )
        assert counts == expected, metadata
    assert _question(stored_forms[1]).answer_counts() == (3, 2, True)
    assert _question(stored_forms[2]).answer_counts() == (7, 0, True)


def test_stored_counts_read_what_from_json_dict_reads() -> None:
    forms = [None, "n/a", {}, {"prompt_tokens": 3, "completion_tokens": 2}, {"prompt_tokens": "7", "completion_tokens": None},
             {"prompt_tokens": True, "completion_tokens": 4}, {"completion_tokens": 9}, {"prompt_tokens": 2.0, "completion_tokens": 1},
             Usage.of(5, 6)]  # fmt: skip
    for stored in forms:
        usage = Usage.from_json_dict(stored)
        expected = (usage.prompt_tokens, usage.completion_tokens) if usage is not None else (None, None)
        assert Usage.stored_counts(stored) == expected, stored
