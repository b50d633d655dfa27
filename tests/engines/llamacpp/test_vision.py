"""LLAMACPP with images: the tiny Idefics3 of :mod:`tests.vision_model` converted to a text GGUF and its
projector (:mod:`tests.vision_gguf`), on the real library, against llama-cpp-python's own ``MTMDChatHandler``
(random weights, exact answers)."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_cpp")
Image = pytest.importorskip("PIL.Image")

from infermux.configs import GenerationParams, InferenceConfig, ModelParams  # noqa: E402
from infermux.engines.llamacpp.engine import LlamaCppInferenceEngine  # noqa: E402
from infermux.samples import read_samples  # noqa: E402
from infermux.types import Conversation  # noqa: E402

pytestmark = pytest.mark.slow

N_CTX = 1024
TOKENS = 16


def png(seed: int, size: tuple[int, int]) -> bytes:
    """A noise picture: different seeds give pictures the model tells apart."""
    import random

    rng = random.Random(seed)
    image = Image.new("RGB", size)
    image.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(size[0] * size[1])])
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("pictures")
    paths = []
    for seed, size in enumerate([(50, 40), (64, 64), (30, 70), (80, 20)]):
        paths.append(folder / f"p{seed}.png")
        paths[-1].write_bytes(png(seed, size))
    return paths


def _engine(gguf: Path, projector: bool, **kwargs: Any) -> LlamaCppInferenceEngine:
    model_kwargs = {"n_ctx": N_CTX, "n_seq_max": 3, **kwargs}
    if projector:
        model_kwargs["mmproj"] = str(gguf / "mmproj.gguf")
    return LlamaCppInferenceEngine(
        ModelParams(model_name=str(gguf / "model.gguf"), model_kwargs=model_kwargs),
        generation_params=GenerationParams(max_new_tokens=TOKENS),
    )


@pytest.fixture(scope="module")
def engine(tiny_vision_gguf: Path):
    eng = _engine(tiny_vision_gguf, projector=True)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def raw(tiny_vision_gguf: Path):
    """llama-cpp-python by hand: ``Llama`` with ``MTMDChatHandler`` on the same files."""
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import MTMDChatHandler

    from infermux.engines.llamacpp.cpu import model_defaults
    from infermux.engines.llamacpp.settings import llama_kwargs

    handler = MTMDChatHandler(clip_model_path=str(tiny_vision_gguf / "mmproj.gguf"), verbose=False)
    with model_defaults():  # as the engine loads it (AMX guard, flash attention and cache types)
        path = str(tiny_vision_gguf / "model.gguf")
        llm = Llama(model_path=path, chat_handler=handler, **llama_kwargs({"n_ctx": N_CTX}))
    yield llm
    llm.close()


def path_part(path: Path) -> dict[str, str]:
    return {"type": "image_path", "content": str(path)}


def text(value: str) -> dict[str, str]:
    return {"type": "text", "content": value}


def user(*parts: dict[str, str]) -> dict[str, Any]:
    return {"role": "user", "content": list(parts)}


def rows_of(*messages: list[dict[str, Any]]) -> list[Conversation]:
    return [Conversation.model_validate({"messages": m}) for m in messages]


def config(eng: LlamaCppInferenceEngine, **generation: Any) -> InferenceConfig:
    return InferenceConfig(
        model=eng.model_params, generation=GenerationParams(**{"max_new_tokens": TOKENS, **generation})
    )


def raw_answer(raw: Any, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The handler's greedy answer, images given as data: URLs (OpenAI's image_url parts)."""
    chat = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = [
                {"type": "text", "text": p["content"]}
                if p["type"] == "text"
                else {"type": "image_url", "image_url": {"url": _data_url(Path(p["content"]).read_bytes())}}
                for p in content
            ]
        chat.append({"role": message["role"], "content": content})
    out: dict[str, Any] = raw.create_chat_completion(
        chat, temperature=0.0, top_k=0, min_p=0.0, top_p=1.0, max_tokens=TOKENS
    )
    return out


def _data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def test_greedy_answers_equal_the_binding_by_hand(engine: LlamaCppInferenceEngine, raw: Any, files: list[Path]) -> None:
    """Rows with different pictures and picture counts, decoded together in 3 sequences, answer as
    ``Llama.create_chat_completion`` with ``MTMDChatHandler`` does one by one."""
    rows = [
        [user(path_part(files[0]), text("What is in this picture?"))],
        [user(text("Compare"), path_part(files[1]), text("with"), path_part(files[2]))],
        [user(path_part(files[3]), text("First one.")), {"role": "assistant", "content": "A picture."},
         user(text("And this one?"), path_part(files[0]))],
        [{"role": "system", "content": "Be brief."}, user(path_part(files[2]), path_part(files[2]), path_part(files[1]))],
        [user(path_part(files[1]), text("What is in this picture?"))],
    ]  # fmt: skip
    answers = engine.infer(rows_of(*rows), config(engine))
    for messages, answer in zip(rows, answers, strict=True):
        assert "error" not in answer.metadata, answer.metadata
        ref = raw_answer(raw, messages)
        assert answer.last_message.text == ref["choices"][0]["message"]["content"]
        assert answer.metadata["usage"]["prompt_tokens"] == ref["usage"]["prompt_tokens"]
        assert answer.metadata["usage"]["completion_tokens"] == ref["usage"]["completion_tokens"]
    assert len({a.last_message.text for a in answers}) == len(answers)


def test_two_different_pictures_give_different_logits(engine: LlamaCppInferenceEngine, files: list[Path]) -> None:
    def first_scores(first: Path, second: Path) -> list[tuple[str, float]]:
        (row,) = rows_of([user(path_part(first), text("and"), path_part(second))])
        (answer,) = engine.infer([row], config(engine, logprobs=True, top_logprobs=5, max_new_tokens=1))
        (sample,) = read_samples(answer)
        assert sample.logprobs is not None
        return [(t.token, t.logprob) for t in sample.logprobs[0].top_logprobs or []]

    same = first_scores(files[0], files[1])
    assert first_scores(files[0], files[1]) == same
    assert first_scores(files[0], files[3]) != same
    assert first_scores(files[3], files[1]) != same


def test_the_same_picture_as_path_bytes_and_urls_gives_the_same_answer(
    engine: LlamaCppInferenceEngine, files: list[Path]
) -> None:
    data = files[2].read_bytes()
    forms = [
        path_part(files[2]),
        {"type": "image_binary", "binary": base64.b64encode(data).decode()},
        {"type": "image_url", "content": _data_url(data)},
        {"type": "image_url", "content": files[2].as_uri()},
    ]
    answers = [a.last_message.text for a in engine.infer(rows_of(*([user(f, text("Describe it."))] for f in forms)))]
    assert len(set(answers)) == 1, answers
    (other,) = engine.infer(rows_of([user(path_part(files[1]), text("Describe it."))]))
    assert other.last_message.text != answers[0]


def test_a_bad_picture_fails_only_its_row(engine: LlamaCppInferenceEngine, files: list[Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(files[0].read_bytes()[:60])
    good = [user(path_part(files[0]), text("Fine."))]
    bad = {
        "missing.png": [user(text("hi")), {"role": "assistant", "content": "hello"},
                        user(path_part(tmp_path / "missing.png"))],
        "broken.png": [user(path_part(files[1]), text("two"), path_part(broken))],
    }  # fmt: skip
    answers = engine.infer(rows_of(good, *bad.values(), good))
    assert "error" not in answers[0].metadata and "error" not in answers[-1].metadata
    assert answers[0].last_message.text == answers[-1].last_message.text
    for name, message_index, answer in zip(bad, (2, 0), answers[1:-1], strict=True):
        error = answer.metadata["error"]
        assert error["kind"] == "invalid_input"
        assert error["message"].startswith(f"message {message_index}: ") and name in error["message"], error


def test_a_picture_seen_before_is_not_evaluated_again(
    engine: LlamaCppInferenceEngine, files: list[Path], tmp_path: Path
) -> None:
    """Prefix reuse keys an image by its pixels: the same picture behind the same text reuses the KV (the same
    answer, fewer tokens evaluated); a picture never seen at that place is evaluated."""
    first = [user(path_part(files[3]), text("One question."))]
    (before,) = engine.infer(rows_of(first))
    evaluated = engine.stats["prompt_tokens_evaluated"]
    (again,) = engine.infer(rows_of([user(path_part(files[3]), text("One question."))]))
    reused = engine.stats["prompt_tokens_evaluated"] - evaluated
    assert again.last_message.text == before.last_message.text
    assert reused <= 2 < before.metadata["usage"]["prompt_tokens"]
    evaluated = engine.stats["prompt_tokens_evaluated"]
    unseen = tmp_path / "unseen.png"
    unseen.write_bytes(png(99, (40, 40)))
    (other,) = engine.infer(rows_of([user(path_part(unseen), text("One question."))]))
    assert engine.stats["prompt_tokens_evaluated"] - evaluated > 16  # the picture and what follows it
    assert other.last_message.text != before.last_message.text


def test_text_rows_answer_as_without_the_projector(engine: LlamaCppInferenceEngine, tiny_vision_gguf: Path) -> None:
    rows = rows_of([{"role": "user", "content": "No picture at all."}], [{"role": "user", "content": "Another."}])
    plain = _engine(tiny_vision_gguf, projector=False)
    try:
        expected = [a.last_message.text for a in plain.infer(rows)]
        assert not plain.capabilities.images
        (refused,) = plain.infer(rows_of([user(text("look"), {"type": "image_url", "content": _data_url(b"x")})]))
    finally:
        plain.close()
    assert [a.last_message.text for a in engine.infer(rows)] == expected
    assert refused.metadata["error"]["kind"] == "unsupported_input"
    assert "model.model_kwargs.mmproj" in refused.metadata["error"]["message"]
    assert LlamaCppInferenceEngine.capabilities.images and engine.capabilities.images


def test_a_wrong_projector_is_a_config_error(tiny_vision_gguf: Path, tmp_path: Path) -> None:
    from infermux.errors import ConfigError

    with pytest.raises(ConfigError, match="mmproj: no single projector file"):
        _engine(tiny_vision_gguf, projector=False, mmproj=str(tmp_path / "none.gguf"))
    with pytest.raises(ConfigError, match="could not load the projector"):
        _engine(tiny_vision_gguf, projector=False, mmproj=str(tiny_vision_gguf / "model.gguf"))


def test_a_streamed_chat_turn_with_a_picture(engine: LlamaCppInferenceEngine, files: list[Path], raw: Any) -> None:
    """A stream (chat, serve) with a picture gives the handler's answer; the next turn evaluates only its new
    message (the picture's KV kept with the answer's)."""
    import asyncio

    first = [user(path_part(files[1]), text("Look at this."))]

    async def collect(messages: list[dict[str, Any]]) -> list[Any]:
        (row,) = rows_of(messages)
        return [event async for event in engine.astream(row, GenerationParams(max_new_tokens=TOKENS))]

    events = asyncio.run(collect(first))
    final = events[-1].conversation
    assert final is not None and "".join(e.delta for e in events if not e.final) == final.last_message.text
    assert final.last_message.text == raw_answer(raw, first)["choices"][0]["message"]["content"]
    evaluated = engine.stats["prompt_tokens_evaluated"]
    second = [*first, {"role": "assistant", "content": final.last_message.text}, {"role": "user", "content": "More?"}]
    events = asyncio.run(collect(second))
    assert events[-1].conversation is not None and "error" not in events[-1].conversation.metadata
    new = engine.stats["prompt_tokens_evaluated"] - evaluated
    before, after = (m.metadata["usage"]["prompt_tokens"] for m in (final, events[-1].conversation))
    assert 0 < new <= after - before, (new, before, after)  # the new turn's tokens, not the picture again
