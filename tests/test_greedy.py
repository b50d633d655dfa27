"""tests/greedy.py's near-tie comparison fails where answers really differ (it guards other tests)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.greedy import assert_same_or_near_tie


def entry(token: str, logprob: float, second: str, second_logprob: float) -> SimpleNamespace:
    alts = [SimpleNamespace(token=token, logprob=logprob), SimpleNamespace(token=second, logprob=second_logprob)]
    return SimpleNamespace(token=token, logprob=logprob, top_logprobs=alts)


# "The answer is 4." where " is" led " was" by 0.2 nats (a near-tie) and " 4" led " four" by 3 nats.
REFERENCE = [entry("The", -0.1, "A", -3.0), entry(" answer", -0.2, " sum", -2.5),
             entry(" is", -0.6, " was", -0.8), entry(" 4", -0.05, " four", -3.05), entry(".", -0.1, "!", -4.0)]  # fmt: skip


def test_the_same_answer_and_a_flip_at_a_near_tie_pass() -> None:
    assert_same_or_near_tie("The answer is 4.", REFERENCE)
    assert_same_or_near_tie("The answer was 4 for sure", REFERENCE)  # unrelated after the flip


@pytest.mark.parametrize(
    "text",
    [
        "The answer is four.",  # left the reference where its choice was clear
        "The answer seems 4.",  # not even the reference's second choice
        "A cat sat.",  # a wrong row: differs at the first, clear token
        "The answer is 4. And more",  # longer than the reference
    ],
)
def test_real_differences_fail(text: str) -> None:
    with pytest.raises(AssertionError):
        assert_same_or_near_tie(text, REFERENCE)


def test_an_exact_tie_listed_before_the_reference_token_passes() -> None:
    # vLLM took "\n" at an exact tie with " Red", which its top_logprobs list first.
    tie = SimpleNamespace(token="\n", logprob=-1.6, top_logprobs=[SimpleNamespace(token=" Red", logprob=-1.6),
                                                                   SimpleNamespace(token="\n", logprob=-1.6)])  # fmt: skip
    reference = [entry("Colours:", -0.1, "Colors:", -3.0), tie, entry("Red", -0.1, "Blue", -3.0)]
    assert_same_or_near_tie("Colours:\nRed", reference)
    assert_same_or_near_tie("Colours: Red, Blue", reference)
    with pytest.raises(AssertionError):
        assert_same_or_near_tie("Colours: Green", reference)


def test_a_reference_cut_by_a_stop_string_passes_equal_and_the_closest_gap_is_returned() -> None:
    # A stop string cut the reference after " answer": its tokens run on, its text does not.
    assert assert_same_or_near_tie("The answer", REFERENCE, reference_text="The answer") == pytest.approx(0.2)
    with pytest.raises(AssertionError):
        assert_same_or_near_tie("The answer", REFERENCE)  # without the cut text: shorter than the reference
