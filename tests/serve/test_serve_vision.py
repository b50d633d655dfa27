"""``infermux serve`` with images: NATIVE on the tiny Idefics3 (tests.vision_model) takes OpenAI ``image_url``
parts; an engine that takes no images (the ECHO plugin) refuses them with an OpenAI-style 400."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest

from tests.serve.running import serve

openai = pytest.importorskip("openai")
Image = pytest.importorskip("PIL.Image")

pytestmark = pytest.mark.slow


def data_url(seed: int) -> str:
    import random

    rng = random.Random(seed)
    image = Image.new("RGB", (32, 32))
    image.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(32 * 32)])
    out = io.BytesIO()
    image.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def messages(seed: int) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                         {"type": "image_url", "image_url": {"url": data_url(seed)}}]}]  # fmt: skip


def test_native_vision_model_answers_image_url_parts(tiny_vision_model: Path) -> None:
    pytest.importorskip("transformers")
    with serve("--engine", "NATIVE", "--model.model_name", str(tiny_vision_model)) as served:
        sdk = openai.OpenAI(base_url=served.api, api_key="-")

        def ask(seed: int, stream: bool = False) -> str:
            if stream:
                chunks = sdk.chat.completions.create(
                    model=str(tiny_vision_model), messages=messages(seed), max_tokens=8, temperature=0, stream=True
                )  # type: ignore[call-overload]
                return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            reply = sdk.chat.completions.create(
                model=str(tiny_vision_model), messages=messages(seed), max_tokens=8, temperature=0
            )  # type: ignore[call-overload]
            return str(reply.choices[0].message.content)

        first = ask(1)
        assert first and ask(1, stream=True) == first
        assert ask(2) != first


def test_an_engine_without_images_refuses_them_with_400() -> None:
    with serve("--engine", "ECHO", timeout=120) as served:
        sdk = openai.OpenAI(base_url=served.api, api_key="-", max_retries=0)
        model = sdk.models.list().data[0].id
        with pytest.raises(openai.BadRequestError) as caught:
            sdk.chat.completions.create(model=model, messages=messages(1))  # type: ignore[arg-type]
        error = caught.value.body
        assert isinstance(error, dict)
        assert error["param"] == "messages" and error["code"] == "unsupported_parameter"
        assert "does not accept images" in error["message"]
