"""The NATIVE batch path's row helpers: prompts rendered to ids, the batch order, and replies from answers."""

from __future__ import annotations

from typing import Any

from infermux.configs.generation_params import GenerationParams
from infermux.configs.model_params import ModelParams
from infermux.engines.local import tool_prompting
from infermux.samples import reply_with_samples, sum_usage
from infermux.types import Conversation, FinishReason, Sample, TokenLogprob, Usage

__all__ = ["batch_order", "prompt_limit", "render", "reply", "row_reply"]


def row_reply(
    conversation: Conversation,
    answers: list[tuple[str, Usage, FinishReason, list[TokenLogprob] | None]],
    generation: GenerationParams,
) -> Conversation:
    """One row from its n answers: the prompt counted once, each sample's own completion tokens."""
    if len(answers) == 1 and answers[0][3] is None:  # one plain answer: with the tool calls it makes
        text, usage, reason, _ = answers[0]
        return reply(conversation, text, usage, reason, generation)
    samples = [
        Sample(text=text, finish_reason=reason, usage=Usage.of(completion=usage.completion_tokens), logprobs=logprobs)
        for text, usage, reason, logprobs in answers
    ]
    prompt_usage = Usage.of(answers[0][1].prompt_tokens, 0)
    return reply_with_samples(conversation, samples, usage=sum_usage([prompt_usage, *(s.usage for s in samples)]),
                              generation=generation)  # fmt: skip


def reply(
    conversation: Conversation, text: str, usage: Usage, reason: FinishReason | None, generation: GenerationParams
) -> Conversation:
    """The answer, with the tool calls it makes (forced JSON or Hermes markup) on the message."""
    answer, calls = tool_prompting.finish(text, conversation, generation)
    if calls:
        reason = FinishReason.TOOL_CALLS
    return conversation.with_reply(answer, usage=usage, finish_reason=reason, tool_calls=calls)


def batch_order(prompts: dict[int, list[int]]) -> list[int]:
    """Rows sorted by prompt length, except that rows opening with the same long prefix (a shared system
    prompt, a few-shot block) stay together, at their shortest member's place, so they share a batch and
    the decode loop evaluates their prefix once, wherever they are in the input."""
    from infermux.engines.native.decode import PREFIX_MIN

    families: dict[tuple[int, ...], list[int]] = {}
    for index, ids in prompts.items():
        families.setdefault(tuple(ids[:PREFIX_MIN]) if len(ids) > PREFIX_MIN else (-1 - index,), []).append(index)
    place = {i: (min(len(prompts[j]) for j in rows), n) for n, rows in enumerate(families.values()) for i in rows}
    return sorted(prompts, key=lambda i: (*place[i], len(prompts[i])))


def render(tokenizer: Any, has_tools: bool, conversation: Conversation, generation: GenerationParams) -> list[int]:
    """The token ids of ``conversation``'s prompt: the chat template rendered, then tokenized."""
    messages, tools = tool_prompting.chat_inputs(conversation, generation, has_tools)
    text = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids


def prompt_limit(params: ModelParams, tokenizer: Any) -> int | None:
    if params.model_max_length:
        return params.model_max_length
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and limit < 10**7 else None
