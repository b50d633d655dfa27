"""NATIVE on a vision-language model: the tiny Idefics3 of :mod:`tests.vision_model` (real architecture,
random weights), against transformers used by hand (its processor, then ``model.generate``)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
Image = pytest.importorskip("PIL.Image")

from infermux.configs import GenerationParams, ModelParams  # noqa: E402
from infermux.engines import images  # noqa: E402
from infermux.engines.native.engine import NativeTextInferenceEngine  # noqa: E402
from infermux.samples import read_samples  # noqa: E402
from infermux.types import Conversation  # noqa: E402

pytestmark = pytest.mark.slow

TOKENS = 16


def picture(seed: int, size: tuple[int, int]) -> Any:
    """A noise picture: different seeds give images the model tells apart."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def png(image: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("pictures")
    paths = []
    for seed, size in enumerate([(50, 40), (64, 64), (30, 70), (80, 20)]):
        path = folder / f"p{seed}.png"
        path.write_bytes(png(picture(seed, size)))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def engine(tiny_vision_model: Path) -> NativeTextInferenceEngine:
    return NativeTextInferenceEngine(
        ModelParams(model_name=str(tiny_vision_model)), generation_params=GenerationParams(max_new_tokens=TOKENS)
    )


@pytest.fixture(scope="module")
def raw(tiny_vision_model: Path) -> tuple[Any, Any]:
    processor = transformers.AutoProcessor.from_pretrained(tiny_vision_model)
    model = transformers.AutoModelForImageTextToText.from_pretrained(tiny_vision_model, dtype=torch.float32).eval()
    return model, processor


def path_part(path: Path) -> dict[str, str]:
    return {"type": "image_path", "content": str(path)}


def text(value: str) -> dict[str, str]:
    return {"type": "text", "content": value}


def user(*parts: dict[str, str]) -> dict[str, Any]:
    return {"role": "user", "content": list(parts)}


def raw_answer(raw: tuple[Any, Any], messages: list[dict[str, Any]]) -> tuple[list[int], str]:
    """The greedy answer of transformers by hand: the processor's chat template with the images in their
    parts, then ``generate``."""
    model, processor = raw
    hf_messages = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = [
                {"type": "text", "text": p["content"]}
                if p["type"] == "text"
                else {"type": "image", "image": Image.open(p["content"]).convert("RGB")}
                for p in content
            ]
        hf_messages.append({"role": message["role"], "content": content})
    inputs = processor.apply_chat_template(
        hf_messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.inference_mode():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=TOKENS)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    if processor.tokenizer.eos_token_id in new:
        new = new[: new.index(processor.tokenizer.eos_token_id) + 1]
    return new, processor.tokenizer.decode(new, skip_special_tokens=True)


def test_greedy_answers_equal_transformers_by_hand(
    engine: NativeTextInferenceEngine, raw: Any, files: list[Path]
) -> None:
    rows = [
        [user(path_part(files[0]), text("What is in this picture?"))],
        [user(text("Compare"), path_part(files[1]), text("with"), path_part(files[2]))],
        [user(path_part(files[3]), text("First one.")), {"role": "assistant", "content": "A picture."},
         user(text("And this one?"), path_part(files[0]))],
        [{"role": "system", "content": "Be brief."}, user(path_part(files[2]), path_part(files[2]), path_part(files[1]))],
        [{"role": "user", "content": "No picture at all."}],
    ]  # fmt: skip
    conversations = [Conversation.model_validate({"messages": messages}) for messages in rows]
    answers = engine.infer(conversations, _config(engine, batch_size=3))
    for messages, answer in zip(rows, answers, strict=True):
        assert "error" not in answer.metadata, answer.metadata
        tokens, expected = raw_answer(raw, messages)
        assert answer.last_message.text == expected
        assert answer.metadata["usage"]["completion_tokens"] == len(tokens)
    assert len({a.last_message.text for a in answers}) == len(answers)


def test_rows_that_end_early_leave_the_batch_with_the_answers_of_transformers(
    engine: NativeTextInferenceEngine, raw: Any, files: list[Path]
) -> None:
    """A stop token from the middle of one answer ends that row early: the decode loop drops it from the
    batch (and its image-filled KV cache) while the others go on, and every answer stays ``generate``'s."""
    rows = [[user(path_part(path), text("Describe it."))] for path in files]
    conversations = [Conversation.model_validate({"messages": messages}) for messages in rows]
    full = [raw_answer(raw, messages)[0] for messages in rows]
    stop = full[0][len(full[0]) // 2]
    answers = engine.infer(conversations, _config(engine, batch_size=4, stop_token_ids=[stop]))
    lengths = set()
    for tokens, answer in zip(full, answers, strict=True):
        cut = tokens[: tokens.index(stop) + 1] if stop in tokens else tokens
        assert answer.last_message.text == raw[1].tokenizer.decode(cut, skip_special_tokens=True)
        assert answer.metadata["usage"]["completion_tokens"] == len(cut)
        lengths.add(len(cut))
    assert len(lengths) > 1  # the rows did end at different steps


def _config(engine: NativeTextInferenceEngine, **generation: Any) -> Any:
    from infermux.configs import InferenceConfig

    return InferenceConfig(
        model=engine.model_params, generation=GenerationParams(**{"max_new_tokens": TOKENS, **generation})
    )


def test_two_different_images_give_different_logits(engine: NativeTextInferenceEngine, files: list[Path]) -> None:
    def first_scores(first: Path, second: Path) -> list[tuple[str, float]]:
        row = Conversation.model_validate({"messages": [user(path_part(first), text("and"), path_part(second))]})
        (answer,) = engine.infer([row], _config(engine, logprobs=True, top_logprobs=5, max_new_tokens=1))
        (sample,) = read_samples(answer)
        assert sample.logprobs is not None
        (step,) = sample.logprobs
        return [(t.token, t.logprob) for t in step.top_logprobs or []]

    same = first_scores(files[0], files[1])
    assert first_scores(files[0], files[1]) == same
    assert first_scores(files[0], files[3]) != same
    assert first_scores(files[3], files[1]) != same


def test_the_same_image_as_path_bytes_and_urls_gives_the_same_answer(
    engine: NativeTextInferenceEngine, files: list[Path]
) -> None:
    data = files[2].read_bytes()
    forms = [
        path_part(files[2]),
        {"type": "image_binary", "binary": base64.b64encode(data).decode()},
        {"type": "image_url", "content": "data:image/png;base64," + base64.b64encode(data).decode()},
        {"type": "image_url", "content": files[2].as_uri()},
    ]
    rows = [Conversation.model_validate({"messages": [user(form, text("Describe it."))]}) for form in forms]
    answers = [a.last_message.text for a in engine.infer(rows)]
    assert len(set(answers)) == 1, answers
    other = Conversation.model_validate({"messages": [user(path_part(files[1]), text("Describe it."))]})
    assert engine.infer([other])[0].last_message.text != answers[0]


def test_a_bad_image_fails_only_its_row(
    engine: NativeTextInferenceEngine, files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(files[0].read_bytes()[:60])
    oversized = tmp_path / "oversized.png"
    oversized.write_bytes(png(picture(9, (300, 300))))
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 200 * 200)
    good = [user(path_part(files[0]), text("Fine."))]
    bad = {
        "missing.png": [user(text("hi")), {"role": "assistant", "content": "hello"},
                        user(path_part(tmp_path / "missing.png"))],
        "broken.png": [user(path_part(files[1]), text("two"), path_part(broken))],
        "oversized.png": [user(path_part(oversized))],
    }  # fmt: skip
    rows = [good, *bad.values(), good]
    answers = engine.infer([Conversation.model_validate({"messages": m}) for m in rows])
    assert "error" not in answers[0].metadata and "error" not in answers[-1].metadata
    assert answers[0].last_message.text == answers[-1].last_message.text
    for name, message_index, answer in zip(bad, (2, 0, 0), answers[1:-1], strict=True):
        error = answer.metadata["error"]
        assert error["kind"] == "invalid_input"
        assert error["message"].startswith(f"message {message_index}: ") and name in error["message"], error


def test_capabilities_follow_the_model(engine: NativeTextInferenceEngine) -> None:
    assert NativeTextInferenceEngine.capabilities.images
    assert engine.capabilities.images


def test_a_job_file_with_relative_images(engine: NativeTextInferenceEngine, files: list[Path], tmp_path: Path) -> None:
    """A JSONL file naming its images relative to its own folder runs wherever the job starts."""
    from infermux.jobs.api import default_options, run_job_file

    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(files[3].read_bytes())
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"messages": [user({"type": "image_path", "content": "pics/a.png"}, text("?"))]}) + "\n")
    out = tmp_path / "out.jsonl"
    options = default_options(engine, engine.generation_params, cache=False)
    asyncio.run(run_job_file(engine, str(rows), str(out), options=options))
    (line,) = out.read_text().splitlines()
    result = json.loads(line)
    assert "error" not in result.get("metadata", {}), result
    direct = engine.infer([Conversation.model_validate({"messages": [user(path_part(files[3]), text("?"))]})])
    assert result["messages"][-1]["content"] == direct[0].last_message.text


OUMI_VISION = """\
# The shape of Oumi's vision inference recipes (configs/recipes/vision/*/inference/*_infer.yaml).
model:
  model_name: "{model}"
  model_max_length: 3072
  torch_dtype_str: "{dtype}"
  chat_template: "{template}"
  trust_remote_code: True

generation:
  max_new_tokens: 8
  batch_size: 2

engine: {engine}
"""


def test_oumi_vision_configs_load_and_run(tiny_vision_model: Path, tmp_path: Path, files: list[Path]) -> None:
    """Oumi's vision recipes load (Qwen3-VL on VLLM, as configs/recipes/vision/qwen3_vl_2b/inference/
    vllm_infer.yaml); the NATIVE one runs image rows on the model it names (the tiny Idefics3) with its own
    template, and a template that renders no image markers fails each row with the reason."""
    from infermux.configs import load_config
    from infermux.engines.registry import build_engine

    qwen = tmp_path / "vllm_infer.yaml"
    qwen.write_text(OUMI_VISION.format(model="Qwen/Qwen3-VL-2B-Instruct", dtype="bfloat16",
                                       template="qwen3-vl-instruct", engine="VLLM"))  # fmt: skip
    config = load_config(qwen)
    assert (config.engine, config.model.model_name, config.model.chat_template) == (
        "VLLM",
        "Qwen/Qwen3-VL-2B-Instruct",
        "qwen3-vl-instruct",
    )
    native = tmp_path / "native_infer.yaml"
    rows = [Conversation.model_validate({"messages": [user(path_part(path), text("What is it?"))]}) for path in files]
    for template in ("auto", "chat_ml"):  # the model's own template; one that renders no image markers
        native.write_text(OUMI_VISION.format(model=tiny_vision_model, dtype="float32", template=template,
                                             engine="NATIVE"))  # fmt: skip
        engine = build_engine(load_config(native))
        try:
            answers = engine.infer(rows)
        finally:
            engine.close()
        if template == "auto":
            assert all("error" not in a.metadata for a in answers) and len({a.last_message.text for a in answers}) > 1
        else:  # each row says why, instead of a failed batch
            for answer in answers:
                assert "placed 0 image marker(s) (<image>) for 1 image(s)" in answer.metadata["error"]["message"]


def test_image_batches_take_the_decode_loop(engine: NativeTextInferenceEngine) -> None:
    """Idefics3 numbers its text positions plainly: its batches are prefilled with the images, then decoded
    token by token in the engine's loop (the answers above are that loop's, equal to ``generate``'s)."""
    from infermux.engines.native.decode import supports_image_decode

    assert supports_image_decode(engine.model)
