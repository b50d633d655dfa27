"""Images of a conversation as decoded pictures, for engines that run the vision model themselves.

Remote engines send an image's bytes or URL on (:mod:`infermux.engines.remote.media`); local engines
(NATIVE, VLLM, LLAMACPP) need the picture itself. :func:`conversation_images` reads every image of a
conversation, in order, from any source a content item can name:

- ``image_binary`` (or any image item carrying bytes): the bytes;
- ``image_path``: the file (a relative path in an input file was made absolute against that file's folder
  when the row was read, :func:`resolve_relative_images`);
- ``image_url``: ``data:`` URLs (base64), ``file:`` URLs, and ``http(s)`` URLs fetched with a timeout and a
  size cap (:data:`FETCH_TIMEOUT_S`, :data:`MAX_IMAGE_BYTES`).

A PDF (by its bytes, whatever the name) becomes one image per page, rendered with pypdfium2 (the ``pdf``
extra). Every failure raises :class:`ImageError` naming the message and the file or URL, so the engine
can fail that row alone. Pillow and pypdfium2 are imported on first use.
"""

from __future__ import annotations

import io
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from infermux.errors import install_hint
from infermux.types import ContentItem, Conversation, Type

__all__ = [
    "FETCH_TIMEOUT_S",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "ImageError",
    "conversation_images",
    "image_bytes",
    "is_pdf",
    "pdf_pages",
    "resolve_relative_images",
]

#: Seconds an ``http(s)`` image may take to arrive.
FETCH_TIMEOUT_S = 30.0
#: The largest image (file, download or PDF) read, in bytes.
MAX_IMAGE_BYTES = 64 * 1024**2
#: The most pixels one decoded image (or PDF page) may have: 8192 x 8192.
MAX_IMAGE_PIXELS = 8192 * 8192
#: PDF pages are rendered at this many dots per inch (a US-letter page: 1275 x 1650 pixels).
PDF_DPI = 150


class ImageError(ValueError):
    """An image that cannot be read or decoded; the message names it (and its message, when known)."""


def is_pdf(data: bytes) -> bool:
    return data[:5] == b"%PDF-"


def resolve_relative_images(conversation: Conversation, folder: Path) -> Conversation:
    """``conversation`` with relative ``image_path`` items made absolute against ``folder`` (the input
    file's folder, so an input file and its images can move together)."""
    changed = False
    messages = []
    for message in conversation.messages:
        items = message.content if isinstance(message.content, list) else None
        if not items or not any(_relative(item) for item in items):
            messages.append(message)
            continue
        new_items = [
            item.model_copy(update={"content": str(folder / str(item.content))}) if _relative(item) else item
            for item in items
        ]
        messages.append(message.model_copy(update={"content": new_items}))
        changed = True
    return conversation.model_copy(update={"messages": messages}) if changed else conversation


def _relative(item: ContentItem) -> bool:
    if item.type != Type.IMAGE_PATH or item.binary or not item.content:
        return False
    path = Path(item.content)
    return not path.is_absolute() and not item.content.startswith("~")


def image_items(conversation: Conversation) -> Iterator[tuple[int, ContentItem]]:
    """``(message index, item)`` for each image item of ``conversation``, in order."""
    for number, message in enumerate(conversation.messages):
        for item in message.images:
            yield number, item


def conversation_images(conversation: Conversation) -> list[list[Any]]:
    """Each image item of ``conversation``, in order, as its RGB ``PIL.Image`` pictures (one, or one per
    page of a PDF).

    Raises:
        ImageError: an image cannot be read, is too large, or is not an image; the message says which
            (``message 2: cannot read image file '/data/a.png': No such file or directory``).
    """
    pictures: list[list[Any]] = []
    for number, item in image_items(conversation):
        try:
            pictures.append(decode(image_bytes(item), _name(item)))
        except ImageError as exc:
            raise ImageError(f"message {number}: {exc}") from None
    return pictures


def _name(item: ContentItem) -> str:
    if item.type == Type.IMAGE_BINARY or (item.binary and not item.content):
        return "image_binary"
    content = str(item.content or "")
    return content if not content.startswith("data:") else content[:40] + "..."


def image_bytes(item: ContentItem) -> bytes:
    """The bytes of an image item, from wherever it names (see the module docstring)."""
    if item.binary:
        return _capped(item.binary, "image_binary")
    content = str(item.content or "")
    if item.type == Type.IMAGE_PATH:
        return _read_file(Path(content).expanduser(), content)
    if item.type != Type.IMAGE_URL:
        raise ImageError(f"content item of type {item.type.value!r} carries no image")
    scheme = urllib.parse.urlsplit(content).scheme.lower()
    if scheme == "data":
        from infermux.engines.remote.media import image_payload

        try:
            data = image_payload(item).data
        except ValueError as exc:
            raise ImageError(str(exc)) from None
        return _capped(data or b"", "the data: URL")
    if scheme == "file":
        path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(content).path))
        return _read_file(path, content)
    if scheme in ("http", "https"):
        return _fetch(content)
    raise ImageError(f"cannot load image URL {content!r}: use an http(s), file: or data: URL, or image_path")


def _capped(data: bytes, where: str) -> bytes:
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(f"{where} holds {len(data)} bytes, more than the {MAX_IMAGE_BYTES}-byte image limit")
    return data


def _read_file(path: Path, shown: str) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise ImageError(
                f"image file {shown!r} has {size} bytes, more than the {MAX_IMAGE_BYTES}-byte image limit"
            )
        return path.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read image file {shown!r}: {exc.strerror or exc}") from None


def _fetch(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "infermux"})
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S) as response:
            data: bytes = response.read(MAX_IMAGE_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise ImageError(f"cannot fetch image URL {url!r}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ImageError(f"cannot fetch image URL {url!r}: {reason}") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(f"image URL {url!r} holds more than the {MAX_IMAGE_BYTES}-byte image limit")
    return data


def decode(data: bytes, where: str) -> list[Any]:
    """``data`` as RGB pictures: one for an image, one per page for a PDF."""
    if is_pdf(data):
        return pdf_pages(data, where)
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - Pillow comes with transformers and vLLM
        raise ImageError(f"decoding images needs Pillow ({exc}): {install_hint(package='pillow')}") from None
    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageError(
                    f"image {where!r} is {width}x{height} pixels, more than the {MAX_IMAGE_PIXELS}-pixel limit"
                )
            return [opened.convert("RGB")]
    except ImageError:
        raise
    except Exception as exc:  # Pillow raises many kinds for broken files
        raise ImageError(f"{where!r} is not a readable image ({type(exc).__name__}: {exc})") from None


def pdf_pages(data: bytes, where: str = "PDF") -> list[Any]:
    """Each page of the PDF ``data`` as an RGB picture at :data:`PDF_DPI`."""
    try:
        import pypdfium2
    except ImportError:
        raise ImageError(
            f"{where!r} is a PDF; rendering its pages needs pypdfium2: {install_hint('pdf')}"
        ) from None
    try:
        document = pypdfium2.PdfDocument(data)
    except Exception as exc:
        raise ImageError(f"{where!r} is not a readable PDF ({exc})") from None
    try:
        pages = []
        for index in range(len(document)):
            page = document[index]
            width, height = page.get_size()
            scale = PDF_DPI / 72
            if width * height * scale * scale > MAX_IMAGE_PIXELS:
                raise ImageError(f"page {index + 1} of {where!r} is too large to render at {PDF_DPI} dpi")
            pages.append(page.render(scale=scale).to_pil().convert("RGB"))
            page.close()
        if not pages:
            raise ImageError(f"{where!r} is a PDF without pages")
        return pages
    finally:
        document.close()
