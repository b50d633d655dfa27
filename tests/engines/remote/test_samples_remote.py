"""generation.n / logprobs / top_logprobs on the remote engines, against the protocol fakes."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from infermux.configs import GenerationParams, ModelParams, RemoteParams
from infermux.engines.remote.anthropic.engine import AnthropicInferenceEngine
from infermux.engines.remote.gemini.engine import GoogleGeminiInferenceEngine
from infermux.engines.remote.openai.engine import RemoteInferenceEngine
from infermux.errors import UnsupportedParamError
from infermux.samples import read_samples
from tests.fakes import FakeAnthropic, FakeGemini, FakeOpenAIChat

ANTHROPIC_KEY = "sk-ant-test"
GEMINI_KEY = "gemini-test-key"


def numbered() -> object:
    counter = itertools.count()
    return lambda ex: f"answer {next(counter)} to {ex.turns[-1][1]}"


@pytest.fixture(scope="module")
def openai_fake() -> Iterator[FakeOpenAIChat]:
    with FakeOpenAIChat(responder=numbered()) as server:  # type: ignore[arg-type]
        yield server


@pytest.fixture(scope="module")
def gemini_fake() -> Iterator[FakeGemini]:
    with FakeGemini(api_key=GEMINI_KEY, responder=numbered()) as server:  # type: ignore[arg-type]
        yield server


@pytest.fixture(scope="module")
def anthropic_fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=ANTHROPIC_KEY, responder=numbered()) as server:  # type: ignore[arg-type]
        yield server


def remote(url: str, key: str | None = None) -> RemoteParams:
    return RemoteParams(api_url=url, api_key=key, max_retries=1, retry_backoff_base=0.01, num_workers=4)


def conversation(text: str = "hi") -> list:
    from infermux.types import Conversation, Message, Role

    return [Conversation(messages=[Message(role=Role.USER, content=text)])]


def test_openai_n_logprobs_top_logprobs(openai_fake: FakeOpenAIChat) -> None:
    openai_fake.clear()
    generation = GenerationParams(n=3, logprobs=True, top_logprobs=2, temperature=0.7, max_new_tokens=20)
    engine = RemoteInferenceEngine(ModelParams(model_name="m"), generation_params=generation,
                                   remote_params=remote(openai_fake.url))  # fmt: skip
    [answer] = engine.infer(conversation("hi"))
    [request] = openai_fake.requests
    body = request.json
    assert (body["n"], body["logprobs"], body["top_logprobs"]) == (3, True, 2)
    samples = answer.metadata["samples"]
    assert [s["text"] for s in samples] == [f"answer {i} to hi" for i in range(3)]
    assert answer.last_message.content == samples[0]["text"]
    assert set(samples[0]) == {"text", "finish_reason", "usage", "tool_calls", "logprobs"}
    assert samples[1]["finish_reason"] == "stop"
    tokens = samples[1]["logprobs"]
    assert "".join(t["token"] for t in tokens) == "answer 1 to hi"
    assert tokens[0]["logprob"] == -0.25 and len(tokens[0]["top_logprobs"]) == 2
    assert tokens[0]["top_logprobs"][0] == {"token": "answer ", "logprob": -0.25, "bytes": list(b"answer ")}
    assert b"".join(bytes(t["bytes"]) for t in tokens) == b"answer 1 to hi"  # the server's bytes, kept
    assert answer.metadata["usage"]["completion_tokens"] == 12  # the whole request's usage, once
    typed = read_samples(answer)
    assert typed[2].logprobs is not None and typed[2].logprobs[1].token == "2 "


def test_openai_n1_logprobs_kept_and_default_unchanged(openai_fake: FakeOpenAIChat) -> None:
    openai_fake.clear()
    engine = RemoteInferenceEngine(ModelParams(model_name="m"), generation_params=GenerationParams(logprobs=True),
                                   remote_params=remote(openai_fake.url))  # fmt: skip
    [answer] = engine.infer(conversation())
    assert "n" not in openai_fake.requests[0].json and openai_fake.requests[0].json["logprobs"] is True
    [sample] = answer.metadata["samples"]
    assert sample["logprobs"] and sample["logprobs"][0]["top_logprobs"] == []
    plain = RemoteInferenceEngine(ModelParams(model_name="m"), remote_params=remote(openai_fake.url))
    [answer] = plain.infer(conversation())
    body = openai_fake.requests[-1].json
    assert not {"n", "logprobs", "top_logprobs"} & set(body)
    assert "samples" not in answer.metadata


def test_top_logprobs_needs_logprobs() -> None:
    with pytest.raises(ValueError, match=r"top_logprobs needs generation\.logprobs"):
        GenerationParams(top_logprobs=3)


def test_gemini_candidate_count_and_logprobs(gemini_fake: FakeGemini) -> None:
    gemini_fake.clear()
    generation = GenerationParams(n=2, logprobs=True, top_logprobs=3, temperature=0.9)
    engine = GoogleGeminiInferenceEngine(ModelParams(model_name="gemini-2.0-flash"), generation_params=generation,
                                         remote_params=remote(gemini_fake.url, GEMINI_KEY))  # fmt: skip
    [answer] = engine.infer(conversation("yo"))
    config = gemini_fake.requests[0].json["generationConfig"]
    assert (config["candidateCount"], config["responseLogprobs"], config["logprobs"]) == (2, True, 3)
    samples = read_samples(answer)
    assert [s.text for s in samples] == ["answer 0 to yo", "answer 1 to yo"]
    assert samples[1].logprobs is not None and samples[1].logprobs[0].logprob == -0.5
    assert [t.token for t in samples[1].logprobs[0].top_logprobs] == ["answer ", "alt1", "alt2"]
    assert answer.metadata["finish_reason"] == "stop" and answer.metadata["usage"]["completion_tokens"] == 8


def test_anthropic_sends_n_requests_and_sums_usage(anthropic_fake: FakeAnthropic) -> None:
    anthropic_fake.clear()
    generation = GenerationParams(n=3, temperature=0.5)
    engine = AnthropicInferenceEngine(ModelParams(model_name="claude-3-5-haiku-latest"), generation_params=generation,
                                      remote_params=remote(anthropic_fake.url, ANTHROPIC_KEY))  # fmt: skip
    [answer] = engine.infer(conversation("q"))
    assert len(anthropic_fake.requests) == 3
    samples = read_samples(answer)
    assert sorted(s.text for s in samples) == [f"answer {i} to q" for i in range(3)]
    assert answer.last_message.content == samples[0].text
    assert all(s.usage is not None and s.usage.completion_tokens == 4 for s in samples)
    assert answer.metadata["usage"]["completion_tokens"] == 12


def test_a_failed_sample_fails_the_row_and_the_rerun_completes_it(
    anthropic_fake: FakeAnthropic, tmp_path: Path
) -> None:
    import asyncio

    anthropic_fake.clear()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"r{i}"}]}) + "\n" for i in range(2)))
    engine = AnthropicInferenceEngine(ModelParams(model_name="claude-3-5-haiku-latest"),
                                      generation_params=GenerationParams(n=2, temperature=0.5),
                                      remote_params=remote(anthropic_fake.url, ANTHROPIC_KEY))  # fmt: skip
    anthropic_fake.fail_next(400, "bad sample")  # one of the first row's two requests: not retryable
    first = asyncio.run(engine.run_file(str(inp), str(out)))
    assert first.failed == 1
    second = asyncio.run(engine.run_file(str(inp), str(out)))
    assert second.failed == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [len(r["metadata"]["samples"]) for r in rows] == [2, 2]
    assert all("error" not in r["metadata"] for r in rows)
    # the rerun sent only the failed row's two requests: 2 + 2 the first time (one failed), 2 now
    assert len(anthropic_fake.requests) == 6


def test_unsupported_n_and_logprobs_warn_or_fail(caplog: pytest.LogCaptureFixture) -> None:
    generation = GenerationParams(n=2, logprobs=True, temperature=1.0)
    with pytest.raises(UnsupportedParamError, match=r"generation.logprobs=True"):
        AnthropicInferenceEngine(ModelParams(model_name="claude"), generation_params=generation,
                                 remote_params=remote("http://127.0.0.1:9", "k"), strict=True)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="infermux.engines"):
        AnthropicInferenceEngine(ModelParams(model_name="claude"), generation_params=generation,
                                 remote_params=remote("http://127.0.0.1:9", "k"))  # fmt: skip
    assert any("generation.logprobs=True" in r.getMessage() for r in caplog.records)
    assert not any("generation.n=" in r.getMessage() and "does not support" in r.getMessage() for r in caplog.records)


def test_greedy_n_warns_once(caplog: pytest.LogCaptureFixture, openai_fake: FakeOpenAIChat) -> None:
    with caplog.at_level(logging.WARNING, logger="infermux.samples"):
        engine = RemoteInferenceEngine(ModelParams(model_name="m"), generation_params=GenerationParams(n=2),
                                       remote_params=remote(openai_fake.url))  # fmt: skip
        engine.infer(conversation())
        engine.infer(conversation())
    warnings = [r for r in caplog.records if "will be identical" in r.getMessage()]
    assert len(warnings) == 1 and "generation.n=2" in warnings[0].getMessage()


def test_chat_stream_with_n_gives_the_whole_answer_with_its_samples(openai_fake: FakeOpenAIChat) -> None:
    import asyncio

    openai_fake.clear()
    engine = RemoteInferenceEngine(ModelParams(model_name="m"), generation_params=GenerationParams(n=2, temperature=1),
                                   remote_params=remote(openai_fake.url))  # fmt: skip

    async def collect() -> list:
        return [event async for event in engine.astream(conversation("s")[0])]

    events = asyncio.run(collect())
    assert "stream" not in openai_fake.requests[0].json
    final = events[-1].conversation
    assert final is not None and len(final.metadata["samples"]) == 2
    assert "".join(e.delta for e in events) == final.last_message.text
