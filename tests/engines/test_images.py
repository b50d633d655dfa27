"""Images for local engines (infermux.engines.images): every source, its limits and its errors, on real
files, a real HTTP server on 127.0.0.1 and real PDFs. No model is loaded."""

from __future__ import annotations

import base64
import http.server
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

Image = pytest.importorskip("PIL.Image")

from infermux.engines import images  # noqa: E402
from infermux.engines.images import ImageError, conversation_images, image_bytes  # noqa: E402
from infermux.jobs.rows import iter_rows  # noqa: E402
from infermux.types import ContentItem, Conversation, Type  # noqa: E402


def png(color: tuple[int, int, int] = (200, 10, 10), size: tuple[int, int] = (20, 12)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def one_image(item: ContentItem) -> Conversation:
    return Conversation.model_validate(
        {"messages": [{"role": "user", "content": [item.model_dump(), {"type": "text", "content": "?"}]}]}
    )


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """Serves /red.png, /big (more bytes than the cap set by the test) and 404 for the rest."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = {"/red.png": png(), "/big": b"x" * 4096}.get(self.path)
            if body is None:
                self.send_error(404, "Not Found")
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_every_source_gives_the_same_bytes(tmp_path: Path, server: str) -> None:
    data = png()
    path = tmp_path / "red.png"
    path.write_bytes(data)
    sources = [
        ContentItem(type=Type.IMAGE_PATH, content=str(path)),
        ContentItem(type=Type.IMAGE_BINARY, binary=data),
        ContentItem(type=Type.IMAGE_URL, content="data:image/png;base64," + base64.b64encode(data).decode()),
        ContentItem(type=Type.IMAGE_URL, content=path.as_uri()),
        ContentItem(type=Type.IMAGE_URL, content=server + "/red.png"),
    ]
    assert [image_bytes(item) for item in sources] == [data] * len(sources)
    (pictures,) = conversation_images(one_image(sources[-1]))
    assert [(p.mode, p.size) for p in pictures] == [("RGB", (20, 12))]


def test_errors_name_the_message_and_the_file_or_url(tmp_path: Path, server: str) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    cases = {
        ContentItem(type=Type.IMAGE_PATH, content=str(tmp_path / "missing.png")): "missing.png",
        ContentItem(type=Type.IMAGE_PATH, content=str(broken)): "not a readable image",
        ContentItem(type=Type.IMAGE_URL, content=server + "/gone.png"): server + "/gone.png",
        ContentItem(type=Type.IMAGE_URL, content="ftp://example.invalid/a.png"): "ftp://example.invalid/a.png",
        ContentItem(type=Type.IMAGE_URL, content="data:image/png;base64,@@@"): "valid base64",
    }
    for item, named in cases.items():
        conversation = Conversation.model_validate(
            {"messages": [{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
                          {"role": "user", "content": [{"type": "text", "content": "see"}, item.model_dump()]}]}
        )  # fmt: skip
        with pytest.raises(ImageError) as caught:
            conversation_images(conversation)
        assert str(caught.value).startswith("message 2: ") and named in str(caught.value), str(caught.value)
    with pytest.raises(ImageError, match="HTTP 404"):
        image_bytes(ContentItem(type=Type.IMAGE_URL, content=server + "/gone.png"))


def test_size_and_pixel_caps(tmp_path: Path, server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", 1000)
    big = tmp_path / "big.png"
    big.write_bytes(b"x" * 1001)
    with pytest.raises(ImageError, match=r"big\.png.*1001 bytes, more than the 1000-byte"):
        image_bytes(ContentItem(type=Type.IMAGE_PATH, content=str(big)))
    with pytest.raises(ImageError, match=r"/big.*more than the 1000-byte"):
        image_bytes(ContentItem(type=Type.IMAGE_URL, content=server + "/big"))
    with pytest.raises(ImageError, match="image_binary holds 1001 bytes"):
        image_bytes(ContentItem(type=Type.IMAGE_BINARY, binary=b"x" * 1001))
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageError, match="20x12 pixels, more than the 100-pixel limit"):
        conversation_images(one_image(ContentItem(type=Type.IMAGE_BINARY, binary=png())))


def test_fetch_times_out_with_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts the connection, never answers
    monkeypatch.setattr(images, "FETCH_TIMEOUT_S", 0.3)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/slow.png"
    try:
        with pytest.raises(ImageError, match=f"cannot fetch image URL '{url}'.*timed out"):
            image_bytes(ContentItem(type=Type.IMAGE_URL, content=url))
    finally:
        listener.close()


def make_pdf(pages: int) -> bytes:
    pdfium = pytest.importorskip("pypdfium2")
    document = pdfium.PdfDocument.new()
    for number in range(pages):
        document.new_page(144 * (number + 1), 72)  # points: 2x1 inch, 4x1 inch, ...
    out = io.BytesIO()
    document.save(out)
    document.close()
    return out.getvalue()


def test_a_pdf_is_one_picture_per_page(tmp_path: Path) -> None:
    path = tmp_path / "doc.pdf"
    path.write_bytes(make_pdf(3))
    (pictures,) = conversation_images(one_image(ContentItem(type=Type.IMAGE_PATH, content=str(path))))
    dpi = images.PDF_DPI
    assert [p.size[1] for p in pictures] == [dpi] * 3  # pdfium may round a width up by a pixel
    assert [round(p.size[0] / dpi) for p in pictures] == [2, 4, 6]
    with pytest.raises(ImageError, match="not a readable PDF"):
        images.pdf_pages(b"%PDF-1.7 truncated", "cut.pdf")


def test_relative_image_paths_resolve_against_the_input_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "data"
    (folder / "pics").mkdir(parents=True)
    (folder / "pics" / "a.png").write_bytes(png())
    absolute = tmp_path / "elsewhere.png"
    rows = folder / "rows.jsonl"
    rows.write_text(
        '{"messages": [{"role": "user", "content": [{"type": "image_path", "content": "pics/a.png"}, '
        f'{{"type": "image_path", "content": "{absolute}"}}, {{"type": "text", "content": "pics/a.png"}}]}}]}}\n'
        '{"messages": [{"role": "user", "content": "no images"}]}\n',
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)  # not the input's folder
    first, second = iter_rows("data/rows.jsonl")
    items = first.conversation.messages[0].content
    assert isinstance(items, list)
    assert [item.content for item in items] == [str(folder / "pics" / "a.png"), str(absolute), "pics/a.png"]
    assert image_bytes(items[0]) == png()
    assert second.conversation.messages[0].content == "no images"
