"""Images on LLAMACPP: a vision GGUF's projector file, through llama.cpp's multi-modal library (mtmd).

A vision model in GGUF comes as two files: the language model (``model.model_name``) and its projector
(``model.model_kwargs.mmproj``, the file llama.cpp's converter writes with ``--mmproj``; llama-cpp-python's
chat handlers call it ``clip_model_path``, which is accepted too). :class:`Projector` loads the projector
onto the loaded model (``mtmd_init_from_file``) and turns a conversation with images into a
:class:`MediaPrompt`, the way llama-cpp-python's ``MTMDChatHandler`` does: each image part becomes the
library's media marker (``<__media__>``) as a text part for the chat template, and ``mtmd_tokenize`` splits
the rendered prompt into text chunks (token ids, with the model's own tokens around each image) and image
chunks (the preprocessed picture: one or more per image, e.g. a slice grid and an overview).

The multi-sequence decoder (:mod:`.decode`) evaluates an image chunk into the row's own sequence with
``mtmd_helper_eval_chunk_single`` (the vision encoder, then the image embeddings decoded at the chunk's
positions) and the text chunks as usual, so rows with images decode beside other rows. An image chunk
takes ``n_pos`` positions (fewer than its ``n_tokens`` KV cells on M-RoPE models). For prefix reuse
(:mod:`.prefix`) a chunk stands in the prompt as ``n_pos`` copies of a negative key drawn from the picture's
hash and its place among the chunks of that picture, so a row reuses the KV of an image another row (or the
previous chat turn) already evaluated only when it is the same picture at the same place; a reuse never
ends inside an image.

Image bytes come from :func:`infermux.engines.images.image_bytes` (paths, ``image_binary``, ``data:``,
``file:`` and ``http(s)`` URLs, with its size cap) and are decoded by the library itself
(``mtmd_helper_bitmap_init_from_buf``, as the handler does), so answers equal the handler's; a PDF
becomes one image per page (pypdfium2, the ``pdf`` extra). A bad image raises :class:`~infermux.engines.
images.ImageError` naming its message and file: the engine fails that row alone.
"""

from __future__ import annotations

import collections
import ctypes
import hashlib
import io
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infermux.configs.generation_params import GenerationParams
from infermux.engines import images
from infermux.engines.local import tool_prompting
from infermux.errors import ConfigError
from infermux.types import Conversation, Type

__all__ = ["PROJECTOR_KWARGS", "MediaPrompt", "Projector", "resolve_projector", "split_prompt"]

#: ``model_kwargs`` naming the projector file (the second is llama-cpp-python's handlers' name).
PROJECTOR_KWARGS = ("mmproj", "clip_model_path")


@dataclass(eq=False)
class MediaPrompt:
    """A prompt with images: keys for prefix reuse (token ids; an image chunk as ``n_pos`` negative keys),
    the key ranges of the image chunks, and the tokenized chunks (freed with this object)."""

    keys: list[int]
    spans: tuple[tuple[int, int], ...]  # [start, end) of each image chunk in ``keys`` (its positions)
    extra_cells: int  # KV cells beyond the positions (image chunks with n_tokens > n_pos)
    _chunks: Any = field(repr=False)  # the mtmd_input_chunks handle
    _indices: tuple[int, ...] = field(repr=False)  # each span's chunk index in ``_chunks``
    _marker: str = ""

    def pieces(self, keep: int) -> Iterator[tuple[int, int, Any]]:
        """From key ``keep`` (never inside an image) to the end: ``(start, end, chunk)`` runs, ``chunk`` the
        image chunk's pointer for an image and None for text tokens ``keys[start:end]``."""
        from llama_cpp import mtmd_cpp

        pos = keep
        for (start, end), index in zip(self.spans, self._indices, strict=True):
            if end <= keep:
                continue
            if pos < start:
                yield pos, start, None
            yield start, end, mtmd_cpp.mtmd_input_chunks_get(self._chunks, index)
            pos = end
        if pos < len(self.keys):
            yield pos, len(self.keys), None

    def display(self, llama: Any, special: bool) -> str:
        """The prompt as text (``exclude_prompt_from_response: false``): each image chunk as the media marker."""
        parts = [
            self._marker
            if chunk is not None
            else llama.detokenize(self.keys[start:end], special=special).decode("utf-8", errors="ignore")
            for start, end, chunk in self.pieces(0)
        ]
        return "".join(parts)


def split_prompt(prompt: list[int] | MediaPrompt) -> tuple[list[int], MediaPrompt | None]:
    """A prompt's keys (what prefix reuse compares) and its images, if it has any."""
    if isinstance(prompt, MediaPrompt):
        return prompt.keys, prompt
    return list(prompt), None


def resolve_projector(value: Any, model_path: Path) -> Path:
    """The projector file ``model_kwargs.mmproj`` names: a path, or a name or glob beside the model file."""
    if not isinstance(value, str | Path) or not str(value):
        raise ConfigError(f"model.model_kwargs.mmproj must be the path of the projector .gguf file, not {value!r}.")
    path = Path(value).expanduser()
    if path.is_file():
        return path
    matches = sorted(p for p in model_path.parent.glob(str(value)) if p.is_file()) if not path.is_absolute() else []
    if len(matches) == 1:
        return matches[0]
    found = ", ".join(p.name for p in matches) if matches else "none"
    raise ConfigError(
        f"model.model_kwargs.mmproj: no single projector file {str(value)!r} (as a path, or beside the model in "
        f"{model_path.parent}: {found}). Give the path of the mmproj .gguf made for this model "
        "(llama.cpp's convert_hf_to_gguf.py --mmproj writes one)."
    )


class Projector:
    """The projector (mtmd context) on ``llama``'s model; tokenizes conversations with images."""

    def __init__(self, llama: Any, path: Path) -> None:
        import llama_cpp
        from llama_cpp import mtmd_cpp
        from llama_cpp._logger import llama_log_callback

        self._lib = mtmd_cpp
        # The library's messages go where llama.cpp's go: shown only with model_kwargs.verbose.
        mtmd_cpp.mtmd_log_set(llama_log_callback, ctypes.c_void_p(0))
        mtmd_cpp.mtmd_helper_log_set(llama_log_callback, ctypes.c_void_p(0))
        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = True  # as MTMDChatHandler: the projector runs where the build's backend is
        params.print_timings = False
        params.n_threads = llama.n_threads
        flash = llama.context_params.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        self._ctx = mtmd_cpp.mtmd_init_from_file(str(path).encode(), llama.model, params)
        if not self._ctx:
            raise ConfigError(
                f"llama.cpp could not load the projector {path} (model.model_kwargs.mmproj) onto {llama.model_path}: "
                "is it the mmproj file made for this model? Run with model_kwargs.verbose: true to see why."
            )
        if not mtmd_cpp.mtmd_support_vision(self._ctx):
            self.close()
            raise ConfigError(
                f"the projector {path} (model.model_kwargs.mmproj) takes no images (an audio projector?)."
            )
        self.path = path
        self.marker = mtmd_cpp.mtmd_default_marker().decode("utf-8")

    def close(self) -> None:
        if self._ctx:
            self._lib.mtmd_free(self._ctx)
            self._ctx = None

    # ------------------------------------------------------------------ prompts
    def prompt(
        self, llama: Any, template: Any, has_tools: bool, conversation: Conversation, generation: GenerationParams
    ) -> MediaPrompt:
        """``conversation`` rendered with a media marker where each image (each PDF page) stands, then tokenized
        with its pictures. Raises ``ImageError`` (a bad image, named with its message index) or the template's
        error."""
        messages, tools = tool_prompting.chat_inputs(conversation, generation, has_tools)
        offset = len(messages) - len(conversation.messages)  # a Hermes tools block put in front
        bitmaps: list[Any] = []
        try:
            for number, message in enumerate(conversation.messages):
                if not message.images or not isinstance(message.content, list):
                    continue
                parts: list[dict[str, str]] = []
                for item in message.content:
                    if item.type == Type.TEXT:
                        parts.append({"type": "text", "text": str(item.content or "")})
                        continue
                    try:
                        pictures = self._bitmaps(item)
                    except images.ImageError as exc:
                        raise images.ImageError(f"message {number}: {exc}") from None
                    bitmaps.extend(pictures)
                    parts.extend({"type": "text", "text": self.marker} for _ in pictures)
                messages[number + offset] = {**messages[number + offset], "content": parts}
            rendered = template(messages=messages, tools=tools)
            if rendered.prompt.count(self.marker) != len(bitmaps):
                raise ValueError(
                    f"the chat template placed {rendered.prompt.count(self.marker)} image(s) for {len(bitmaps)}: it "
                    "does not render list content for this model. Leave model.chat_template unset (the model's own "
                    "template) or name one that renders a message's text parts."
                )
            return self._tokenize(rendered.prompt, bitmaps, add_special=not rendered.added_special)
        finally:
            for bitmap in bitmaps:
                self._lib.mtmd_bitmap_free(bitmap)

    def _bitmaps(self, item: Any) -> list[Any]:
        """An image item as the library's bitmaps (one, or one per PDF page), each with its pixels' hash as id."""
        data = images.image_bytes(item)
        where = _label(item)
        if images.is_pdf(data):
            bitmaps = []
            for page in images.pdf_pages(data, where):
                pixels = page.tobytes()
                bitmaps.append(self._lib.mtmd_bitmap_init(page.width, page.height, _buffer(pixels)))
            return [self._identified(b) for b in bitmaps]
        _check_size(data, where)
        bitmap = self._lib.mtmd_helper_bitmap_init_from_buf(self._ctx, _buffer(data), len(data), False)
        if not bitmap:
            raise images.ImageError(f"{where} is not a readable image (llama.cpp could not decode it)")
        return [self._identified(bitmap)]

    def _identified(self, bitmap: Any) -> Any:
        lib = self._lib
        size = (lib.mtmd_bitmap_get_nx(bitmap), lib.mtmd_bitmap_get_ny(bitmap))
        pixels = ctypes.string_at(lib.mtmd_bitmap_get_data(bitmap), lib.mtmd_bitmap_get_n_bytes(bitmap))
        lib.mtmd_bitmap_set_id(bitmap, hashlib.sha256(repr(size).encode() + pixels).hexdigest().encode())
        return bitmap

    def _tokenize(self, text: str, bitmaps: list[Any], *, add_special: bool) -> MediaPrompt:
        lib = self._lib
        encoded = text.encode("utf-8")
        source = lib.mtmd_input_text()
        source.text, source.text_len = encoded, len(encoded)
        source.add_special, source.parse_special = add_special, True
        chunks = lib.mtmd_input_chunks_init()
        prompt = MediaPrompt([], (), 0, chunks, (), self.marker)
        weakref.finalize(prompt, lib.mtmd_input_chunks_free, chunks)
        array = (lib.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
        status = lib.mtmd_tokenize(self._ctx, chunks, ctypes.byref(source), array, len(bitmaps))
        if status != 0:
            raise images.ImageError(f"llama.cpp could not prepare the images of this prompt (mtmd_tokenize: {status})")
        keys: list[int] = []
        spans: list[tuple[int, int]] = []
        indices: list[int] = []
        seen: collections.Counter[bytes] = collections.Counter()
        for index in range(lib.mtmd_input_chunks_size(chunks)):
            chunk = lib.mtmd_input_chunks_get(chunks, index)
            if lib.mtmd_input_chunk_get_type(chunk) == lib.MTMD_INPUT_CHUNK_TYPE_TEXT:
                count = ctypes.c_size_t()
                tokens = lib.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                keys.extend(tokens[: count.value])
                continue
            n_pos, n_tokens = lib.mtmd_input_chunk_get_n_pos(chunk), lib.mtmd_input_chunk_get_n_tokens(chunk)
            identity = lib.mtmd_input_chunk_get_id(chunk) or b""
            key = _key(identity, seen[identity])
            seen[identity] += 1
            spans.append((len(keys), len(keys) + max(1, n_pos)))
            indices.append(index)
            keys.extend([key] * max(1, n_pos))
            prompt.extra_cells += max(0, n_tokens - n_pos)
        if not keys or (spans and spans[-1][1] == len(keys)):
            raise ValueError("the prompt ends with an image: the chat template must put text after it")
        prompt.keys, prompt.spans, prompt._indices = keys, tuple(spans), tuple(indices)
        return prompt

    # ------------------------------------------------------------------ evaluation (the decoder's thread)
    def evaluate(self, llama_ctx: Any, chunk: Any, pos: int, seq: int, n_batch: int) -> None:
        """Encode the image ``chunk`` and decode its embeddings into sequence ``seq`` from position ``pos``."""
        import llama_cpp

        new_pos = llama_cpp.llama_pos(0)
        status = self._lib.mtmd_helper_eval_chunk_single(
            self._ctx, llama_ctx, chunk, pos, seq, n_batch, False, ctypes.byref(new_pos)
        )
        if status != 0:
            raise images.ImageError(f"llama.cpp could not evaluate an image of this prompt (status {status})")


def _key(identity: bytes, occurrence: int) -> int:
    """A negative prompt key for the ``occurrence``-th chunk of the picture ``identity`` (never a token id)."""
    digest = hashlib.sha256(identity + b"/" + str(occurrence).encode()).digest()
    return -1 - int.from_bytes(digest[:7], "big")


def _buffer(data: bytes) -> Any:
    return (ctypes.c_uint8 * len(data)).from_buffer_copy(data)


def _label(item: Any) -> str:
    from infermux.engines.vllm.media import image_label

    return image_label(item)


def _check_size(data: bytes, where: str) -> None:
    """Refuse a picture over :data:`~infermux.engines.images.MAX_IMAGE_PIXELS` from its header (Pillow, when
    installed), before the library decodes it."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - the library decodes it; nothing to check the header with
        return
    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
    except Exception:  # not for Pillow to judge: the library says whether it can read it
        return
    if width * height > images.MAX_IMAGE_PIXELS:
        raise images.ImageError(
            f"image {where} is {width}x{height} pixels, more than the {images.MAX_IMAGE_PIXELS}-pixel limit"
        )
