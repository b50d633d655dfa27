"""NATIVE rows with images, on image-text-to-text models (``AutoModelForImageTextToText``).

A row's images are read and decoded (:mod:`infermux.engines.images`) when its chunk runs, never at the
input check, so a job's memory does not grow with its number of rows. Its messages are rendered by the
model's chat template with an ``{"type": "image"}`` part where each image stands (a PDF: one per page);
the model's own processor then expands each image into its tokens and makes the pixel tensors, for a
whole batch at once (left-padded), exactly as ``processor(text=..., images=...)`` does by hand before
``model.generate``; the engine's decode loop then prefills that batch (:func:`.decode.supports_image_decode`)
or hands it to ``model.generate``. Rows without images on such a model take the text path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infermux.configs.generation_params import GenerationParams
from infermux.engines.images import conversation_images
from infermux.engines.local import tool_prompting
from infermux.types import Conversation, Type

__all__ = ["VisionPrompts", "VisualRow"]


@dataclass(frozen=True)
class VisualRow:
    """A rendered prompt (images as the template's image markers) and its decoded pictures, in order."""

    text: str
    pictures: list[Any]


class VisionPrompts:
    """Renders rows with images and turns batches of them into the model's inputs."""

    def __init__(self, processor: Any, tokenizer: Any, template_has_tools: bool) -> None:
        self.processor = processor
        self.tokenizer = tokenizer
        self.template_has_tools = template_has_tools

    def prepare(self, conversation: Conversation, generation: GenerationParams) -> VisualRow:
        """Decode the row's images and render its prompt; raises ``ImageError`` naming a bad image's message
        and file."""
        per_item = conversation_images(conversation)
        messages, tools = tool_prompting.chat_inputs(conversation, generation, self.template_has_tools)
        offset = len(messages) - len(conversation.messages)  # a Hermes tools block put in front
        pictures: list[Any] = []
        for number, message in enumerate(conversation.messages):
            if not message.images or not isinstance(message.content, list):
                continue
            parts: list[dict[str, Any]] = []
            for item in message.content:
                if item.type == Type.TEXT:
                    parts.append({"type": "text", "text": str(item.content or "")})
                    continue
                decoded = per_item.pop(0)
                pictures.extend(decoded)
                parts.extend({"type": "image"} for _ in decoded)
            messages[number + offset] = {**messages[number + offset], "content": parts}
        text = self.tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
        marker = getattr(self.processor, "image_token", None)
        if isinstance(marker, str) and text.count(marker) != len(pictures):
            raise ValueError(
                f"the chat template placed {text.count(marker)} image marker(s) ({marker}) for {len(pictures)} "
                "image(s): it does not render image parts for this model. Leave model.chat_template unset (the "
                "model's own template) or name one that renders images for it."
            )
        return VisualRow(text=text, pictures=pictures)

    def sort_ids(self, row: VisualRow) -> list[int]:
        """The prompt's tokens before image expansion: to sort and group rows by length, cheaply."""
        ids: list[int] = self.tokenizer(row.text, add_special_tokens=False)["input_ids"]
        return ids

    def inputs(self, rows: list[VisualRow], device: Any) -> dict[str, Any]:
        """The model's inputs for ``rows`` as one left-padded batch (``input_ids``, ``attention_mask`` and
        the architecture's pixel tensors)."""
        batch = self.processor(
            text=[row.text for row in rows],
            images=[row.pictures for row in rows],
            padding=True,
            add_special_tokens=False,
            return_tensors="pt",
        )
        return {key: value.to(device) if hasattr(value, "to") else value for key, value in batch.items()}


def prompt_rows(inputs: dict[str, Any]) -> list[list[int]]:
    """Each row's prompt tokens (the padding left out) from a batch of model inputs."""
    ids, mask = inputs["input_ids"].tolist(), inputs["attention_mask"].tolist()
    return [[t for t, m in zip(row, keep, strict=True) if m] for row, keep in zip(ids, mask, strict=True)]
