"""LLAMACPP prompt-KV planning (no model): which slot each admitted prompt takes and what it reuses."""

from __future__ import annotations

from infermux.engines.llamacpp.prefix import MIN_COPY, common_prefix, plan_admissions


def test_common_prefix_lengths():
    assert common_prefix([], [1, 2]) == 0
    assert common_prefix([1, 2, 3], [1, 2, 3]) == 3
    assert common_prefix([1, 2, 3], [1, 2]) == 2
    assert common_prefix([1, 2, 3, 4, 5], [1, 2, 9, 4, 5]) == 2
    long = list(range(1000))
    assert common_prefix(long, [*long[:777], -1, *long[778:]]) == 777


def test_requests_admitted_together_share_their_prefix_through_one_leader():
    system = list(range(100, 200))  # a long shared system prompt
    prompts = [[*system, 1, 2, 3], [7, 8, 9, 10], [*system, 4, 5], [*system, 6, 6, 6, 6]]
    plan = plan_admissions(prompts, [[] for _ in range(4)], [0, 1, 2, 3])
    first, second = plan.waves
    assert [a.index for a in first] == [0, 1] and all(a.keep == 0 and a.source is None for a in first)
    leader_slot = first[0].slot
    assert [(a.index, a.source, a.keep) for a in second] == [(2, leader_slot, 100), (3, leader_slot, 100)]
    assert len({a.slot for a in first + second}) == 4


def test_a_free_slot_is_reused_in_place_and_a_busy_one_is_copied():
    system = list(range(50, 90))
    cached = [[*system, 1, 1], [*system, 2, 2, 2], [9, 9]]
    # slot 0 is busy, slots 1 and 2 free: the new prompt reuses slot 1 in place (42 tokens).
    plan = plan_admissions([[*system, 2, 2, 3, 3]], cached, [1, 2])
    (adm,) = plan.waves[0]
    assert (adm.slot, adm.source, adm.keep) == (1, None, 42)
    # only slot 2 free: copying busy slot 0's 40-token prefix beats 0 tokens in place
    plan = plan_admissions([[*system, 5, 5]], cached, [2])
    (adm,) = plan.waves[0]
    assert (adm.slot, adm.source, adm.keep) == (2, 0, 40)


def test_short_shares_are_not_worth_a_copy_and_two_prompt_tokens_are_always_evaluated():
    short = list(range(MIN_COPY - 1))
    plan = plan_admissions([[*short, 1, 2], [*short, 3, 4]], [[], []], [0, 1])
    assert [a.source for a in plan.waves[0]] == [None, None] and plan.waves[1] == []
    same = [5, 6, 7, 8]
    (adm,) = plan_admissions([same], [[*same, 9]], [0]).waves[0]
    assert adm.keep == 2  # the whole prompt is cached, yet its last two tokens are evaluated again


def test_a_few_reusable_tokens_do_not_pull_a_prompt_away_from_the_lowest_free_slot():
    """A gap between busy slots costs llama.cpp a pass per decode step: the lowest free slot wins unless
    another saves MIN_COPY tokens more."""
    template = [1, 2, 3, 4, 5]
    cached = [[], [9], [*template, 7], [*template, 8, 8]]  # slot 1 busy
    (adm,) = plan_admissions([[*template, 8, 9, 9]], cached, [0, 2, 3]).waves[0]
    assert (adm.slot, adm.source, adm.keep) == (0, None, 0)
    long = list(range(100, 100 + MIN_COPY + 5))
    (adm,) = plan_admissions([[*long, 1, 2]], [[], [9], [*long, 7]], [0, 2]).waves[0]
    assert (adm.slot, adm.keep) == (2, len(long))  # a long reuse is still worth the gap


def test_a_reuse_never_ends_inside_an_image():
    """An image chunk (keys -5 x 8 at 4..12) is evaluated whole: a shared prefix that ends inside it (another
    picture's keys, or the two-token rule) is cut back to where the image starts."""
    text, picture = [1, 2, 3, 4], [-5] * 8
    prompt = [*text, *picture, 6, 7]
    spans = [((4, 12),)]
    other = [*text, *picture[:5], -9, -9, -9, 6, 7]  # the same keys for a while (only possible in a test)
    (adm,) = plan_admissions([prompt], [other], [0], spans).waves[0]
    assert adm.keep == 4
    (adm,) = plan_admissions([prompt], [other], [0]).waves[0]  # without spans: a token cut
    assert adm.keep == 9
    ends_with_image = [*text, *picture, 6]  # the two-token rule would stop at 11, inside the image
    (adm,) = plan_admissions([ends_with_image], [ends_with_image], [0], [((4, 12),)]).waves[0]
    assert adm.keep == 4
    (adm,) = plan_admissions([prompt], [prompt], [0], spans).waves[0]  # the whole image reused
    assert adm.keep == 12
