"""Images of a conversation, in the forms provider protocols want them.

A :class:`~infermux.types.ContentItem` holds an image as a local path, a URL or raw bytes. Providers
want either the bytes (base64 with a media type: Anthropic, Gemini, Bedrock, SGLang) or a URL
(``http(s)``, ``gs://``, ``s3://``, or a ``data:`` URL). :func:`image_payload` turns any item into
:class:`ImagePayload`, reading local files and decoding data URLs, and sniffing the media type from
the bytes so a wrong file extension cannot mislabel an image.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from infermux.types import ContentItem, Type

__all__ = ["ImagePayload", "image_payload", "sniff_image_type"]

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def sniff_image_type(data: bytes) -> str | None:
    """The image media type from the file's magic bytes (PNG, JPEG, GIF, WebP), or None."""
    for signature, media_type in _SIGNATURES:
        if data.startswith(signature):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


@dataclass(frozen=True)
class ImagePayload:
    """An image as bytes (``data``) or, when it was given as a remote URL, as ``url`` only."""

    data: bytes | None = None
    media_type: str | None = None
    url: str | None = None

    @property
    def base64(self) -> str:
        if self.data is None:
            raise ValueError("this image is a URL, not bytes")
        return base64.b64encode(self.data).decode("ascii")

    @property
    def data_url(self) -> str:
        """``data:<type>;base64,...`` for bytes, the URL itself otherwise."""
        if self.data is None:
            assert self.url is not None
            return self.url
        return f"data:{self.media_type or 'application/octet-stream'};base64,{self.base64}"

    @property
    def format(self) -> str | None:
        """The short format name (``png``, ``jpeg``, ``gif``, ``webp``)."""
        return self.media_type.split("/", 1)[1] if self.media_type else None


def image_payload(item: ContentItem) -> ImagePayload:
    """Turn an image content item into bytes or a URL. Raises ``ValueError`` with a clear message.

    Bytes carried by the item (``binary``) are the image, whatever its type: an ``image_path`` or
    ``image_url`` item is read or kept as a URL only when it carries no bytes (as in Oumi)."""
    content = item.content or ""
    if item.binary and item.type != Type.TEXT:
        guessed = mimetypes.guess_type(content.split("?", 1)[0])[0] if content else None
        return ImagePayload(data=item.binary, media_type=sniff_image_type(item.binary) or guessed)
    if item.type == Type.IMAGE_BINARY:
        raise ValueError("an image_binary item carries no bytes")
    if item.type == Type.IMAGE_PATH:
        path = Path(content).expanduser()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read image file {content!r}: {exc.strerror or exc}") from None
        guessed = mimetypes.guess_type(path.name)[0]
        return ImagePayload(data=data, media_type=sniff_image_type(data) or guessed)
    if item.type == Type.IMAGE_URL:
        if content.startswith("data:"):
            return _from_data_url(content)
        return ImagePayload(url=content, media_type=mimetypes.guess_type(content.split("?", 1)[0])[0])
    raise ValueError(f"content item of type {item.type.value!r} is not an image")


def _from_data_url(url: str) -> ImagePayload:
    header, sep, payload = url.partition(",")
    if not sep or ";base64" not in header:
        raise ValueError("a data: image URL must be base64 encoded (data:<type>;base64,<data>)")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the data: image URL does not hold valid base64") from None
    declared = header[len("data:") :].split(";", 1)[0] or None
    return ImagePayload(data=data, media_type=sniff_image_type(data) or declared)
